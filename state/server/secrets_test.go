package server_test

import (
	"context"
	"strings"
	"testing"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/state/server"
	"github.com/upshift-io/upshift/state/validate"
)

const plantedSecret = "planted-private-key-5c1e9a"

func talosconfigWith(secret string) string {
	return "context: prod\ncontexts:\n  prod:\n    endpoints: [10.0.0.1]\n    ca: Y2E=\n    crt: Y3J0\n    key: " + secret + "\n"
}

// Over the API a Credentials resource says which configurations are set, never what they hold: Get, List, both
// kinds of watch and History alike. Asking explicitly reads them back; writing the placeholder back is refused.
func TestCredentialsAreRedactedUnlessAsked(t *testing.T) {
	t.Parallel()

	c, local := serve(t)
	ctx := t.Context()

	require.NoError(t, local.Create(ctx, newCluster("v1.14.1")))

	creds := cluster.NewCredentials("prod")
	creds.TypedSpec().Talosconfig = talosconfigWith(plantedSecret)
	require.NoError(t, c.State().Create(ctx, creds))

	requireRedacted := func(r resource.Resource, what string) {
		t.Helper()

		spec := r.(*cluster.Credentials).TypedSpec() //nolint:forcetypeassert
		require.Equal(t, resources.Redacted, spec.Talosconfig, what)
		require.Empty(t, spec.Kubeconfig, "%s: an unset secret stays visibly unset", what)
	}

	got, err := c.State().Get(ctx, creds.Metadata())
	require.NoError(t, err)
	requireRedacted(got, "get")

	list, err := c.State().List(ctx, creds.Metadata())
	require.NoError(t, err)
	require.Len(t, list.Items, 1)
	requireRedacted(list.Items[0], "list")

	watchCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	events := make(chan state.Event)
	require.NoError(t, c.State().Watch(watchCtx, creds.Metadata(), events))
	requireRedacted((<-events).Resource, "watch")

	kindEvents := make(chan state.Event)
	require.NoError(t, c.State().WatchKind(watchCtx, creds.Metadata(), kindEvents, state.WithBootstrapContents(true)))
	requireRedacted((<-kindEvents).Resource, "watch kind")

	hist, err := c.History(ctx, creds.Metadata().Namespace(), creds.Metadata().Type(), "prod")
	require.NoError(t, err)
	require.Len(t, hist.Events, 1)
	require.NotContains(t, hist.Events[0].Resource, plantedSecret)
	require.Contains(t, hist.Events[0].Resource, resources.Redacted)

	shown, err := c.State().Get(server.WithSecretsShown(ctx), creds.Metadata())
	require.NoError(t, err)
	require.Contains(t, shown.(*cluster.Credentials).TypedSpec().Talosconfig, plantedSecret) //nolint:forcetypeassert

	shownHist, err := c.History(server.WithSecretsShown(ctx), creds.Metadata().Namespace(), creds.Metadata().Type(), "prod")
	require.NoError(t, err)
	require.Contains(t, shownHist.Events[0].Resource, plantedSecret)

	// A read-modify-write of what a plain read returned would store the placeholder: refused, naming the field.
	_, err = safe.StateUpdateWithConflicts(ctx, c.State(), creds.Metadata(), func(r *cluster.Credentials) error {
		r.Metadata().Labels().Set("touched", "yes")

		return nil
	})

	var verr *validate.Error

	require.ErrorAs(t, err, &verr)
	require.Contains(t, verr.Error(), "spec.talosconfig")

	stored, err := safe.StateGet[*cluster.Credentials](ctx, local, creds.Metadata())
	require.NoError(t, err)
	require.Contains(t, stored.TypedSpec().Talosconfig, plantedSecret, "nothing was written on refusal")
}

// A malformed secret is refused without quoting it: parsers' errors may echo what they choke on.
func TestCredentialsValidationNeverQuotesTheSecret(t *testing.T) {
	t.Parallel()

	c, local := serve(t)
	ctx := t.Context()

	require.NoError(t, local.Create(ctx, newCluster("v1.14.1")))

	creds := cluster.NewCredentials("prod")
	creds.TypedSpec().Talosconfig = "context: [" + plantedSecret
	creds.TypedSpec().Kubeconfig = "{" + plantedSecret

	err := c.State().Create(ctx, creds)
	require.Error(t, err)
	require.True(t, strings.Contains(err.Error(), "spec.talosconfig") && strings.Contains(err.Error(), "spec.kubeconfig"), err.Error())
	require.NotContains(t, err.Error(), plantedSecret)
}
