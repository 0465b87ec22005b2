package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v4"

	"github.com/upshift-io/upshift/internal/adopt"
	"github.com/upshift-io/upshift/internal/applyfile"
	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/state/server"
	"github.com/upshift-io/upshift/state/validate"
)

// importFlags are the options of `upshift cluster import`.
type importFlags struct {
	talosconfig      string
	context          string
	endpoints        []string
	kubeconfig       string
	dryRun           bool
	allowUnreachable bool
	showSecrets      bool
}

func init() {
	var flags importFlags

	clusterCmd := &cobra.Command{
		Use:   "cluster",
		Short: "Put running Talos clusters under upshift",
	}

	cmd := &cobra.Command{
		Use:   "import NAME --talosconfig FILE",
		Short: "Discover a running Talos cluster through its talosconfig and write its Cluster, Machines and Credentials",
		Long: "Discover every member of a running Talos cluster through the Talos API (cluster discovery, checked against\n" +
			"the etcd members and the Kubernetes Nodes), with each one's role, Talos API endpoint and Talos version, and the\n" +
			"cluster's Kubernetes version; fetch a kubeconfig through the Talos API unless --kubeconfig gives one. Then write\n" +
			"the Cluster (wanting the versions it runs, so nothing starts until you ask for an upgrade), its Machines and\n" +
			"Credentials, all checked first: nothing is written if any is refused. Importing again adds the machines that\n" +
			"joined since, removes those that left, and says what changed; the Cluster's targets stay as they are.\n" +
			"A member that does not answer refuses the import, unless --allow-unreachable. --dry-run prints the YAML it\n" +
			"would apply (credentials redacted unless --show-secrets) and writes nothing.",
		Args: cobra.ExactArgs(1),
	}

	endpoint := clientFlags(cmd)
	cmd.Flags().StringVar(&flags.talosconfig, "talosconfig", "", "the cluster's talosconfig")
	cmd.MarkFlagRequired("talosconfig") //nolint:errcheck // the flag exists
	cmd.Flags().StringVar(&flags.context, "context", "", "the talosconfig context to use (default its current one)")
	cmd.Flags().StringSliceVar(&flags.endpoints, "endpoints", nil, "Talos API endpoints to use instead of the context's (host[:port],...)")
	cmd.Flags().StringVar(&flags.kubeconfig, "kubeconfig", "", "the cluster's kubeconfig (default: fetched through the Talos API)")
	cmd.Flags().BoolVar(&flags.dryRun, "dry-run", false, "print the YAML that would be applied; write nothing")
	cmd.Flags().BoolVar(&flags.allowUnreachable, "allow-unreachable", false, "import the members that answer, and list those that do not")
	cmd.Flags().BoolVar(&flags.showSecrets, "show-secrets", false, "with --dry-run, print the credentials instead of whether they are set")

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return runImport(cmd.Context(), endpoint, cmd.OutOrStdout(), args[0], flags)
	}

	clusterCmd.AddCommand(cmd)
	rootCmd.AddCommand(clusterCmd)
}

// runImport checks the arguments before reaching anything, discovers the cluster, then plans and applies (or
// prints) its resources.
func runImport(ctx context.Context, endpoint *target, w io.Writer, name string, flags importFlags) error {
	var v resources.Violations
	if v.CheckDNSLabel("NAME", name); v.Err() != nil {
		return v.Err()
	}

	access, kubeconfig, err := readImportFiles(flags)
	if err != nil {
		return err
	}

	res, err := discover(ctx, access, kubeconfig)
	if err != nil {
		return fmt.Errorf("discovering cluster %q: %w", name, err)
	}

	if err = res.Refuse(flags.allowUnreachable); err != nil {
		return fmt.Errorf("importing cluster %q: %w", name, err)
	}

	return withClient(endpoint, func(c *server.Client) error {
		return importCluster(ctx, c, w, name, res, access, flags)
	})
}

// readImportFiles reads the talosconfig (its chosen context, with --endpoints) and the kubeconfig when given.
func readImportFiles(flags importFlags) (adopt.Access, []byte, error) {
	data, err := os.ReadFile(flags.talosconfig)
	if err != nil {
		return adopt.Access{}, nil, fmt.Errorf("reading the talosconfig: %w", err)
	}

	access, err := adopt.ReadTalosconfig(data, flags.context, flags.endpoints)
	if err != nil {
		return adopt.Access{}, nil, fmt.Errorf("talosconfig %s: %w", flags.talosconfig, err)
	}

	if flags.kubeconfig == "" {
		return access, nil, nil
	}

	kubeconfig, err := os.ReadFile(flags.kubeconfig)
	if err != nil {
		return adopt.Access{}, nil, fmt.Errorf("reading the kubeconfig: %w", err)
	}

	return access, kubeconfig, nil
}

// discover reaches the cluster with the machinery client and client-go.
func discover(ctx context.Context, access adopt.Access, kubeconfig []byte) (adopt.Result, error) {
	tc, err := talos.New(ctx, talos.WithTalosconfig(access.Talosconfig))
	if err != nil {
		return adopt.Result{}, err
	}

	defer tc.Close() //nolint:errcheck

	return adopt.Discover(ctx, adopt.Source{
		Talos:      tc,
		Ask:        access.Ask,
		Port:       access.Port,
		Kubeconfig: kubeconfig,
		Kubernetes: func(kubeconfig []byte) (adopt.Kubernetes, error) { return kube.New(kubeconfig) },
	})
}

// importCluster plans the import over what the server holds, checks every resource and removal as the server
// will, and then writes them all (or, dry, prints them).
func importCluster(ctx context.Context, c *server.Client, w io.Writer, name string, res adopt.Result, access adopt.Access, flags importFlags) error {
	current, err := currentOf(ctx, c.State(), name)
	if err != nil {
		return err
	}

	plan := adopt.NewPlan(name, res, access.Talosconfig, current)

	docs := []applyfile.Document{
		{Resource: plan.Cluster, Source: "cluster " + name},
		{Resource: plan.Credentials, Source: "credentials of " + name},
	}

	for _, m := range plan.Machines {
		docs = append(docs, applyfile.Document{Resource: m, Source: "machine " + m.Metadata().ID()})
	}

	_, checked, err := check(ctx, c, docs, nil)
	if err != nil {
		return err
	}

	if err = checkRemovals(ctx, checked, name, plan.Remove, current); err != nil {
		return err
	}

	if flags.dryRun {
		return printImport(w, docs, plan, res, flags.showSecrets)
	}

	if err = writeAll(ctx, c, w, docs); err != nil {
		return err
	}

	for _, id := range plan.Remove {
		if err = c.State().Destroy(ctx, cluster.NewMachine(id).Metadata()); err != nil && !state.IsNotFoundError(err) {
			return fmt.Errorf("deleting machine %q, no longer a member: %w", id, err)
		}

		fmt.Fprintf(w, "machine/%s deleted\n", id)
	}

	summarize(w, name, plan, res)

	return nil
}

// currentOf reads what the server holds of the cluster: its spec and its machines.
func currentOf(ctx context.Context, st state.State, name string) (adopt.Current, error) {
	current := adopt.Current{Machines: map[string]cluster.MachineSpec{}}

	c, err := safe.StateGetByID[*cluster.Cluster](ctx, st, name)

	switch {
	case state.IsNotFoundError(err):
	case err != nil:
		return current, fmt.Errorf("reading cluster %q: %w", name, err)
	default:
		spec := *c.TypedSpec()
		current.Cluster = &spec
	}

	machines, err := safe.StateListAll[*cluster.Machine](ctx, st, state.WithLabelQuery(resource.LabelEqual(cluster.LabelCluster, name)))
	if err != nil {
		return current, fmt.Errorf("listing the machines of cluster %q: %w", name, err)
	}

	for m := range machines.All() {
		current.Machines[m.Metadata().ID()] = *m.TypedSpec()
	}

	return current, nil
}

// checkRemovals asks each machine to remove whether it may go (not in the middle of an upgrade step), as the
// server will, before anything is written.
func checkRemovals(ctx context.Context, checked resources.Getter, name string, remove []string, current adopt.Current) error {
	var errs []error

	for _, id := range remove {
		spec := current.Machines[id]
		md := cluster.NewMachine(id).Metadata()

		err := spec.CheckDestroy(ctx, md, checked)

		var violations resources.Violations

		switch {
		case errors.As(err, &violations):
			errs = append(errs, fmt.Errorf("machine %s, no longer a member of %s: %w", id, name, &validate.Error{Type: md.Type(), ID: id, Violations: violations}))
		case err != nil:
			return err
		}
	}

	if len(errs) > 0 {
		return fmt.Errorf("nothing was applied:\n%w", errors.Join(errs...))
	}

	return nil
}

// summarize says what the import found and changed: the versions, the machines added, removed or changed, and the
// members left out because they did not answer.
func summarize(w io.Writer, name string, plan adopt.Plan, res adopt.Result) {
	verb := "imported"
	if !plan.New {
		verb = "re-imported"
	}

	fmt.Fprintf(w, "%s cluster %s: %d machines, Talos %s, Kubernetes %s", verb, name, len(res.Machines), res.TalosVersion, res.KubernetesVersion)

	if res.KubeconfigFetched {
		fmt.Fprint(w, ", kubeconfig fetched through the Talos API")
	}

	fmt.Fprintln(w)

	if plan.New && plan.Cluster.TypedSpec().Paused {
		fmt.Fprintf(w, "its machines run different versions: it wants the newest and is paused; nothing starts until `upshift upgrade resume %s`\n", name)
	}

	if !plan.New {
		fmt.Fprintln(w, "the cluster's targets are unchanged")
	}

	if len(plan.Changes) == 0 {
		fmt.Fprintln(w, "no machine added, removed or changed")
	}

	for _, ch := range plan.Changes {
		fmt.Fprintln(w, ch)
	}

	for _, u := range res.Unreachable {
		fmt.Fprintf(w, "unreachable, not imported: %s (%s): %v\n", u.Name, u.Role, u.Err)
	}
}

// importDocument is a resource as `upshift apply` reads it back.
type importDocument struct {
	Metadata struct {
		Type string `yaml:"type"`
		ID   string `yaml:"id"`
	} `yaml:"metadata"`
	Spec any `yaml:"spec"`
}

// printImport prints the documents an import would apply, the credentials redacted unless showSecrets, with what it
// would change as comments.
func printImport(w io.Writer, docs []applyfile.Document, plan adopt.Plan, res adopt.Result, showSecrets bool) error {
	var out bytes.Buffer

	for _, ch := range plan.Changes {
		fmt.Fprintf(&out, "# %s\n", ch)
	}

	for _, u := range res.Unreachable {
		fmt.Fprintf(&out, "# unreachable, not imported: %s (%s)\n", u.Name, u.Role)
	}

	for i, doc := range docs {
		var d importDocument

		d.Metadata.Type = resources.DisplayType(doc.Resource.Metadata().Type())
		d.Metadata.ID = doc.Resource.Metadata().ID()
		d.Spec = doc.Resource.Spec()

		if creds, ok := doc.Resource.Spec().(*cluster.CredentialsSpec); ok && !showSecrets {
			redacted := *creds
			redacted.Redact()
			d.Spec = &redacted
		}

		if i > 0 {
			out.WriteString("---\n")
		}

		enc := yaml.NewEncoder(&out)
		enc.SetIndent(2)

		if err := enc.Encode(d); err != nil {
			return fmt.Errorf("rendering %s: %w", doc.Source, err)
		}
	}

	_, err := w.Write(out.Bytes())

	return err
}
