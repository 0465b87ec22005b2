package store_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/protobuf"
	"github.com/cosi-project/runtime/pkg/resource/typed"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/state/store"
)

// secretType is a registered test resource whose definition declares it sensitive, as Credentials do.
const secretType = resource.Type("TestSecrets.store.upshift.io")

type secretSpec struct {
	Key string `protobuf:"1" yaml:"key"`
}

func (s secretSpec) DeepCopy() secretSpec { return s }

type secretExtension struct{}

func (secretExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{Type: secretType, DefaultNamespace: "default", Sensitivity: meta.Sensitive}
}

type secret = typed.Resource[secretSpec, secretExtension]

func newSecret(id resource.ID, key string) *secret {
	return typed.NewResource[secretSpec, secretExtension](
		resource.NewMetadata("default", secretType, id, resource.VersionUndefined), secretSpec{Key: key})
}

func init() {
	if err := protobuf.RegisterDynamic[secretSpec](secretType, &secret{}); err != nil {
		panic(err)
	}
}

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, store.KeySize) }

// requireNotInFile fails if any of the strings is in the file's raw bytes.
func requireNotInFile(t *testing.T, path string, secrets ...string) {
	t.Helper()

	raw, err := os.ReadFile(path)
	require.NoError(t, err)

	for _, s := range secrets {
		require.False(t, bytes.Contains(raw, []byte(s)), "%q is in clear in %s", s, path)
	}
}

// Every place a sensitive resource reaches the file holds it sealed: the current state, the log records of its
// creation, updates and destruction, and the compaction snapshot. Reads, history and verify still see it.
func TestSensitiveResourcesAreEncryptedAtRest(t *testing.T) {
	t.Parallel()

	const (
		first  = "first-secret-9f2c41d7"
		second = "second-secret-7be01a3c"
		gone   = "destroyed-secret-0c55e6a1"
	)

	key := testKey(7)
	path, s, st := newTestStore(t, store.WithEncryptionKey(key), store.WithRetention(store.Retention{MaxEvents: 2}))
	ctx := t.Context()

	require.NoError(t, st.Create(ctx, newSecret("a", first)))
	_, err := safe.StateUpdateWithConflicts(ctx, st, newSecret("a", "").Metadata(), func(r *secret) error {
		r.TypedSpec().Key = second

		return nil
	})
	require.NoError(t, err)

	// Read before the writes below can make the retention compact these two events away.
	hist, err := s.History(ctx, "default", secretType, "a")
	require.NoError(t, err)

	var keys []string
	for _, ev := range hist.Events {
		keys = append(keys, ev.Resource.(*secret).TypedSpec().Key) //nolint:forcetypeassert
	}

	require.Equal(t, []string{first, second}, keys, "history opens sealed records")

	require.NoError(t, st.Create(ctx, newSecret("b", gone)))
	require.NoError(t, st.Destroy(ctx, newSecret("b", "").Metadata()))

	clearStatus := newStatus("default", "in-clear-status")
	require.NoError(t, st.Create(ctx, clearStatus))

	require.NoError(t, s.Close())

	requireNotInFile(t, path, first, second, gone)

	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, bytes.Contains(raw, []byte("in-clear-status")), "types not declared sensitive stay in clear (the check above would be vacuous otherwise)")

	report, err := store.Verify(path)
	require.NoError(t, err)
	require.True(t, report.Consistent(), report.String())

	s = openTestStore(t, path, store.WithEncryptionKey(key))
	defer s.Close() //nolint:errcheck

	got, err := safe.StateGet[*secret](ctx, s.State(), newSecret("a", "").Metadata())
	require.NoError(t, err)
	require.Equal(t, second, got.TypedSpec().Key)
}

// A file bound to a key is refused, untouched, without it or with another one; the error says so and never
// quotes what the file holds.
func TestOpenRefusesWrongOrMissingKey(t *testing.T) {
	t.Parallel()

	path, s, st := newTestStore(t, store.WithEncryptionKey(testKey(1)))
	require.NoError(t, st.Create(t.Context(), newSecret("a", "bound-secret")))
	require.NoError(t, s.Close())

	before, err := os.ReadFile(path)
	require.NoError(t, err)

	for name, tc := range map[string]struct {
		want error
		opts []store.Option
	}{
		"wrong key": {want: store.ErrWrongKey, opts: []store.Option{store.WithEncryptionKey(testKey(2))}},
		"no key":    {want: store.ErrNoKey},
	} {
		_, err = store.Open(path, tc.opts...)
		require.ErrorIs(t, err, tc.want, name)
		require.ErrorContains(t, err, path, name)
		require.NotContains(t, err.Error(), "bound-secret", name)
	}

	_, err = store.Open(path, store.WithEncryptionKey([]byte("short")))
	require.ErrorContains(t, err, "32")

	after, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, before, after, "a refused file must never be modified")
}

// A store without a key refuses to write a sensitive resource rather than keep it in clear.
func TestNoKeyRefusesSensitiveWrites(t *testing.T) {
	t.Parallel()

	path, s, st := newTestStore(t)
	err := st.Create(t.Context(), newSecret("a", "never-written-secret"))
	require.ErrorIs(t, err, store.ErrNoKey)

	_, err = st.Get(t.Context(), newSecret("a", "").Metadata())
	require.True(t, state.IsNotFoundError(err), "a refused write leaves nothing behind: %v", err)
	require.NoError(t, s.Close())
	requireNotInFile(t, path, "never-written-secret")
}

// A file written before encryption at rest (its secrets in clear, no key check) opens with a key: what it holds
// stays readable, the file is bound to the key, and the next write of each secret is sealed.
func TestPreEncryptionFileIsEncryptedOnNextWrite(t *testing.T) {
	t.Parallel()

	path := filepath.Join(t.TempDir(), "state.db")
	require.NoError(t, store.BuildLog(path, 1, 1, func(int, uint64) resource.Resource {
		r := newSecret("old", "old-clear-secret")
		r.Metadata().SetVersion(resource.VersionUndefined.Next())

		return r
	}))

	key := testKey(3)
	s := openTestStore(t, path, store.WithEncryptionKey(key))
	st := state.WrapCore(s.State())

	got, err := safe.StateGet[*secret](t.Context(), st, newSecret("old", "").Metadata())
	require.NoError(t, err)
	require.Equal(t, "old-clear-secret", got.TypedSpec().Key)

	require.NoError(t, st.Create(t.Context(), newSecret("new", "new-sealed-secret")))
	require.NoError(t, s.Close())
	requireNotInFile(t, path, "new-sealed-secret")

	_, err = store.Open(path, store.WithEncryptionKey(testKey(4)))
	require.ErrorIs(t, err, store.ErrWrongKey, "the first keyed open binds the file to its key")
}
