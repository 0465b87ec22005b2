package store_test

import (
	"path/filepath"
	"testing"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/conformance"
	"github.com/stretchr/testify/require"
	"github.com/stretchr/testify/suite"

	"github.com/upshift-io/upshift/state/store"
)

func TestConformance(t *testing.T) {
	t.Parallel()

	s, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	require.NoError(t, err)

	t.Cleanup(func() { require.NoError(t, s.Close()) })

	suite.Run(t, &conformance.StateSuite{
		State:      state.WrapCore(s.State()),
		Namespaces: []resource.Namespace{"default", "controller", "system", "runtime"},
	})
}
