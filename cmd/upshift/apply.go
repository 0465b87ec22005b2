package main

import (
	"bytes"
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
	"go.yaml.in/yaml/v4"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/catalog"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/state/server"
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
		docs, problems, err := readDocuments(file, cmd.InOrStdin())
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

// applied is one document of an apply file, decoded into its typed resource.
type applied struct {
	resource resource.Resource
	source   string // "FILE: document N (line L)" for messages
}

// documentMetadata is what a document's metadata may hold. Fields that the engine manages (version, owner, phase,
// times, finalizers) are accepted so the output of `get -o yaml` can be applied back, and ignored.
type documentMetadata struct {
	Namespace   string            `yaml:"namespace,omitempty"`
	Type        string            `yaml:"type"`
	ID          string            `yaml:"id"`
	Labels      map[string]string `yaml:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty"`
	Version     any               `yaml:"version,omitempty"`
	Owner       any               `yaml:"owner,omitempty"`
	Phase       any               `yaml:"phase,omitempty"`
	Created     any               `yaml:"created,omitempty"`
	Updated     any               `yaml:"updated,omitempty"`
	Finalizers  any               `yaml:"finalizers,omitempty"`
}

type documentShape struct {
	Metadata yaml.Node `yaml:"metadata"`
	Spec     yaml.Node `yaml:"spec"`
}

// readDocuments decodes every document of file into typed resources. It returns the documents it could decode
// and the problems of the others; it fails outright only when the file cannot be read or parsed as YAML.
func readDocuments(file string, stdin io.Reader) ([]applied, []error, error) {
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
		return nil, nil, fmt.Errorf("reading %s: %w", file, err)
	}

	dec := yaml.NewDecoder(bytes.NewReader(data))

	var (
		docs []applied
		errs []error
		seen = map[string]string{}
	)

	for n := 1; ; n++ {
		var node yaml.Node

		err = dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			return nil, nil, fmt.Errorf("%s: document %d is not valid YAML: %w", file, n, err)
		}

		if len(node.Content) == 0 || node.Content[0].Kind == 0 || isNull(node.Content[0]) {
			continue // an empty document, e.g. after a trailing ---
		}

		source := fmt.Sprintf("%s: document %d (line %d)", file, n, node.Line)

		doc, err := decodeDocument(&node)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", source, err))

			continue
		}

		key := resource.String(doc)
		if first, dup := seen[key]; dup {
			errs = append(errs, fmt.Errorf("%s: %s %q is also defined in %s", source, resources.DisplayType(doc.Metadata().Type()), doc.Metadata().ID(), first))

			continue
		}

		seen[key] = source
		docs = append(docs, applied{resource: doc, source: source})
	}

	if len(docs) == 0 && len(errs) == 0 {
		return nil, nil, fmt.Errorf("%s holds no resources", file)
	}

	return docs, errs, nil
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// decodeDocument turns one YAML document into the typed input resource it describes; unknown fields are errors.
func decodeDocument(node *yaml.Node) (resource.Resource, error) {
	var (
		doc documentShape
		md  documentMetadata
	)

	if err := strictDecode(node.Content[0], &doc); err != nil {
		return nil, err
	}

	if err := strictDecode(&doc.Metadata, &md); err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}

	switch {
	case md.Type == "":
		return nil, errors.New("metadata.type is required (e.g. Cluster, Machine, MachineLock)")
	case md.ID == "":
		return nil, errors.New("metadata.id is required")
	case md.Namespace != "" && md.Namespace != resources.Namespace:
		return nil, fmt.Errorf("metadata.namespace %q: upshift resources live in namespace %q", md.Namespace, resources.Namespace)
	}

	prototype, ok := catalog.Lookup(md.Type)
	if !ok {
		return nil, fmt.Errorf("metadata.type %q is not an upshift resource type (input types: %s)", md.Type, inputTypes())
	}

	r := resources.New(prototype, md.ID)
	if !resources.IsInput(r) {
		return nil, fmt.Errorf("%s is an output of the engine, written only by its controllers (input types: %s)",
			prototype.ResourceDefinition().Type, inputTypes())
	}

	for k, v := range md.Labels {
		r.Metadata().Labels().Set(k, v)
	}

	for k, v := range md.Annotations {
		r.Metadata().Annotations().Set(k, v)
	}

	if doc.Spec.Kind == 0 {
		return nil, errors.New("spec is required")
	}

	if err := strictDecode(&doc.Spec, r.Spec()); err != nil {
		return nil, fmt.Errorf("spec of %s %q: %w", resources.DisplayType(r.Metadata().Type()), md.ID, err)
	}

	return r, nil
}

// strictDecode decodes node into v, refusing keys v has no field for: a typo must not be silently dropped.
// Errors carry the line in the file.
func strictDecode(node *yaml.Node, v any) error {
	if node.Kind == yaml.MappingNode {
		fields := yamlFields(reflect.TypeOf(v).Elem())

		for i := 0; i+1 < len(node.Content); i += 2 {
			key := node.Content[i]
			if !slices.Contains(fields, key.Value) {
				return fmt.Errorf("line %d: unknown field %q (fields: %s)", key.Line, key.Value, strings.Join(fields, ", "))
			}
		}
	}

	return node.Decode(v)
}

// yamlFields lists the YAML keys of struct type t.
func yamlFields(t reflect.Type) []string {
	var fields []string

	for field := range t.Fields() {
		name, _, _ := strings.Cut(field.Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			fields = append(fields, name)
		}
	}

	return fields
}

func inputTypes() string {
	var names []string

	for _, r := range catalog.All() {
		if resources.IsInput(resources.New(r, "")) {
			names = append(names, resources.DisplayType(r.ResourceDefinition().Type))
		}
	}

	return strings.Join(names, ", ")
}

// overlay reads the resources of the file being applied, and the server's for the rest, so references between
// documents of one file are checked as they will be once the file is applied.
type overlay struct {
	server resources.Getter
	docs   map[string]resource.Resource
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
func apply(ctx context.Context, c *server.Client, w io.Writer, docs []applied, problems []error, dryRun bool) error {
	view := overlay{server: c.State(), docs: map[string]resource.Resource{}}
	for _, doc := range docs {
		view.docs[pointerKey(doc.resource.Metadata())] = doc.resource
	}

	errs := problems

	for _, doc := range docs {
		md := doc.resource.Metadata()

		err := doc.resource.Spec().(resources.Validator).Validate(ctx, md, view) //nolint:forcetypeassert // decodeDocument admits inputs only

		var violations resources.Violations

		switch {
		case errors.As(err, &violations):
			errs = append(errs, fmt.Errorf("%s: %w", doc.source, &validate.Error{Type: md.Type(), ID: md.ID(), Violations: violations}))
		case err != nil:
			return err
		}
	}

	if len(errs) > 0 {
		return fmt.Errorf("nothing was applied:\n%w", errors.Join(errs...))
	}

	slices.SortStableFunc(docs, func(a, b applied) int {
		return catalog.Rank(a.resource.Metadata().Type()) - catalog.Rank(b.resource.Metadata().Type())
	})

	if dryRun {
		return showDryRun(ctx, w, view, docs)
	}

	for _, doc := range docs {
		outcome, err := write(ctx, c.State(), doc.resource)
		if err != nil {
			return fmt.Errorf("%s: %w", doc.source, err)
		}

		fmt.Fprintf(w, "%s/%s %s\n", strings.ToLower(resources.DisplayType(doc.resource.Metadata().Type())), doc.resource.Metadata().ID(), outcome)
	}

	return nil
}

// write creates r, or updates the existing resource's spec, labels and annotations to r's; it says which it did.
func write(ctx context.Context, st state.State, r resource.Resource) (string, error) {
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
func showDryRun(ctx context.Context, w io.Writer, view overlay, docs []applied) error {
	for _, doc := range docs {
		md := doc.resource.Metadata()
		fmt.Fprintf(w, "%s/%s would be applied (dry run: nothing was written)\n", strings.ToLower(resources.DisplayType(md.Type())), md.ID())

		patch, ok := doc.resource.Spec().(*cluster.ConfigPatchSpec)
		if !ok {
			continue
		}

		effects, err := patch.Effect(ctx, md, view)
		if err != nil {
			return err
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
