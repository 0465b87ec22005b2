package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/spf13/cobra"

	"github.com/upshift-io/upshift/internal/applyfile"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/catalog"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/state/server"
	"github.com/upshift-io/upshift/state/store"
	"github.com/upshift-io/upshift/state/validate"
)

func init() {
	var (
		file   string
		dryRun bool
	)

	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or update input resources from a YAML file",
		Long: "Create or update input resources (clusters, machines, machine locks, config patches, credentials) from a\n" +
			"YAML file of one or more documents (FILE - reads stdin). Every document is checked first; if any is invalid,\n" +
			"nothing is written. Each document is:\n\n" +
			"  metadata:\n    type: Cluster        # any type name or alias\n    id: prod\n  spec:\n    talosVersion: v1.14.1\n    ...",
		Args: cobra.NoArgs,
	}

	endpoint := clientFlags(cmd)
	cmd.Flags().StringVarP(&file, "file", "f", "", "YAML file of resources (- for stdin)")
	cmd.MarkFlagRequired("file") //nolint:errcheck // the flag exists
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "check the documents and show, per machine, what each config patch would change; write nothing")

	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		data, err := readApplyFile(file, cmd.InOrStdin())
		if err != nil {
			return err
		}

		docs, problems, err := applyfile.Decode(file, data)
		if err != nil {
			return err
		}

		c, err := connect(endpoint)
		if err != nil {
			return err
		}

		defer c.Close() //nolint:errcheck

		return explain(endpoint, apply(cmd.Context(), c, cmd.OutOrStdout(), docs, problems, dryRun))
	}

	rootCmd.AddCommand(cmd)
}

// readApplyFile reads the file to apply; "-" is stdin.
func readApplyFile(file string, stdin io.Reader) ([]byte, error) {
	var (
		data []byte
		err  error
	)

	if file == "-" {
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(file)
	}

	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}

	return data, nil
}

// overlay reads the resources of the file being applied, and the server's for the rest, so references between
// documents of one file are checked as they will be once the file is applied.
type overlay struct {
	server resources.Getter
	docs   map[string]resource.Resource
}

// knowingOverlay is an overlay that also says which versions the server knows (resources.KnownVersions).
type knowingOverlay struct {
	overlay
	resources.KnownVersions
}

func (o overlay) Get(ctx context.Context, ptr resource.Pointer, opts ...state.GetOption) (resource.Resource, error) {
	if r, ok := o.docs[pointerKey(ptr)]; ok {
		return r, nil
	}

	return o.server.Get(ctx, ptr, opts...)
}

// List lists the server's resources of kind with the file's documents of that kind put over them, each document
// labelled as the server will label it, then filtered by the options' queries.
func (o overlay) List(ctx context.Context, kind resource.Kind, opts ...state.ListOption) (resource.List, error) {
	var options state.ListOptions
	for _, opt := range opts {
		opt(&options)
	}

	list, err := o.server.List(ctx, kind, opts...)
	if err != nil {
		return list, err
	}

	items := slices.DeleteFunc(list.Items, func(r resource.Resource) bool {
		_, replaced := o.docs[pointerKey(r.Metadata())]

		return replaced
	})

	for _, r := range o.docs {
		md := r.Metadata()
		if md.Namespace() != kind.Namespace() || md.Type() != kind.Type() {
			continue
		}

		if labeller, ok := r.Spec().(resources.Labeller); ok {
			for k, v := range labeller.Labels() {
				md.Labels().Set(k, v)
			}
		}

		if options.LabelQueries.Matches(*md.Labels()) && options.IDQuery.Matches(*md) {
			items = append(items, r)
		}
	}

	return resource.List{Items: items}, nil
}

func pointerKey(ptr resource.Pointer) string {
	return ptr.Namespace() + "/" + ptr.Type() + "/" + ptr.ID()
}

// apply checks every document, then, if none has a problem (problems holds those found while decoding), writes
// them in dependency order (clusters before their machines). A dry run writes nothing and shows what each config
// patch would change on each machine it targets.
func apply(ctx context.Context, c *server.Client, w io.Writer, docs []applyfile.Document, problems []error, dryRun bool) error {
	view, _, err := check(ctx, c, docs, problems)
	if err != nil {
		return err
	}

	if dryRun {
		return showDryRun(ctx, w, view, docs)
	}

	return writeAll(ctx, c, w, docs)
}

// check validates every document as the server will, over the server's resources with the documents put over
// them, and sorts docs in dependency order. It returns that view (checked also says which versions the server
// knows) for further checks; any problem, with those found while decoding, refuses them all.
func check(ctx context.Context, c *server.Client, docs []applyfile.Document, problems []error) (overlay, resources.Getter, error) {
	view := overlay{server: c.State(), docs: map[string]resource.Resource{}}
	for _, doc := range docs {
		view.docs[pointerKey(doc.Resource.Metadata())] = doc.Resource
	}

	// The versions the engine knows, so that a file asking for one it does not know is refused whole here, not
	// half-written until the server refuses that document.
	known, err := c.KnownVersions(ctx)
	if err != nil {
		return view, nil, fmt.Errorf("asking the server which versions it knows: %w", err)
	}

	var checked resources.Getter = view
	if known != nil {
		checked = knowingOverlay{overlay: view, KnownVersions: known}
	}

	errs := problems

	for _, doc := range docs {
		md := doc.Resource.Metadata()

		err := doc.Resource.Spec().(resources.Validator).Validate(ctx, md, checked) //nolint:forcetypeassert // decodeDocument admits inputs only

		var violations resources.Violations

		switch {
		case errors.As(err, &violations):
			errs = append(errs, fmt.Errorf("%s: %w", doc.Source, &validate.Error{Type: md.Type(), ID: md.ID(), Violations: violations}))
		case err != nil:
			return view, nil, err
		}
	}

	if len(errs) > 0 {
		return view, nil, fmt.Errorf("nothing was applied:\n%w", errors.Join(errs...))
	}

	slices.SortStableFunc(docs, func(a, b applyfile.Document) int {
		return catalog.Rank(a.Resource.Metadata().Type()) - catalog.Rank(b.Resource.Metadata().Type())
	})

	return view, checked, nil
}

// writeAll writes checked documents in their order and says, per document, whether it was created, configured or
// unchanged.
func writeAll(ctx context.Context, c *server.Client, w io.Writer, docs []applyfile.Document) error {
	for _, doc := range docs {
		outcome, err := write(ctx, c.State(), doc.Resource)
		if err != nil {
			return fmt.Errorf("%s: %w", doc.Source, err)
		}

		fmt.Fprintf(w, "%s/%s %s\n", strings.ToLower(resources.DisplayType(doc.Resource.Metadata().Type())), doc.Resource.Metadata().ID(), outcome)
	}

	return nil
}

// write creates r, or updates the existing resource's spec, labels and annotations to r's; it says which it did.
// A secret is compared with the stored one (read back for that only), so applying the same file twice changes
// nothing, and a read-modify-write never carries the redaction placeholder.
func write(ctx context.Context, st state.State, r resource.Resource) (string, error) {
	if store.Sensitive(r) {
		ctx = server.WithSecretsShown(ctx)
	}

	current, err := st.Get(ctx, r.Metadata())
	if state.IsNotFoundError(err) {
		return "created", st.Create(ctx, r)
	}

	if err != nil {
		return "", err
	}

	if reflect.DeepEqual(current.Spec(), r.Spec()) && current.Metadata().Labels().Equal(*r.Metadata().Labels()) &&
		current.Metadata().Annotations().Equal(*r.Metadata().Annotations()) {
		return "unchanged", nil
	}

	_, err = st.UpdateWithConflicts(ctx, r.Metadata(), func(cur resource.Resource) error {
		reflect.ValueOf(cur.Spec()).Elem().Set(reflect.ValueOf(r.Spec()).Elem())
		replaceAll(cur.Metadata().Labels(), r.Metadata().Labels().Raw())
		replaceAll(cur.Metadata().Annotations(), r.Metadata().Annotations().Raw())

		return nil
	})

	return "configured", err
}

// keyValues is what labels and annotations have in common.
type keyValues interface {
	Keys() []string
	Set(key, value string)
	Delete(key string)
}

// replaceAll makes kv hold exactly want.
func replaceAll(kv keyValues, want map[string]string) {
	for _, k := range kv.Keys() {
		if _, keep := want[k]; !keep {
			kv.Delete(k)
		}
	}

	for k, v := range want {
		kv.Set(k, v)
	}
}

// showDryRun prints what applying docs would do: each document's name, and for a config patch the change of every
// targeted machine's effective config (secrets redacted), as the engine will compute it.
func showDryRun(ctx context.Context, w io.Writer, view overlay, docs []applyfile.Document) error {
	for _, doc := range docs {
		md := doc.Resource.Metadata()
		fmt.Fprintf(w, "%s/%s would be applied (dry run: nothing was written)\n", strings.ToLower(resources.DisplayType(md.Type())), md.ID())

		patch, ok := doc.Resource.Spec().(*cluster.ConfigPatchSpec)
		if !ok {
			continue
		}

		// The effect is computed from the machines' configs, which hold their secrets: only a caller allowed to read
		// secrets back (an admin) gets them, and the diffs printed are redacted (machineconfig.Diff).
		effects, err := patch.Effect(server.WithSecretsShown(ctx), md, view)
		if err != nil {
			return fmt.Errorf("computing what %s changes (the machines' configs hold secrets, which only the admin role reads): %w", md.ID(), err)
		}

		if len(effects) == 0 {
			fmt.Fprintln(w, "  no machine whose config the engine has seen is targeted")
		}

		for _, e := range effects {
			if e.Diff == "" {
				fmt.Fprintf(w, "  %s: no change\n", e.Machine)

				continue
			}

			fmt.Fprintf(w, "  %s:\n", e.Machine)

			for line := range strings.Lines(e.Diff) {
				fmt.Fprintf(w, "    %s", line)
			}
		}
	}

	return nil
}
