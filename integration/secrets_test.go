package integration

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/siderolabs/crypto/x509"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	talosconfig "github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/catalog"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// plantedSecret is planted in both configurations of a cluster's Credentials, next to the real keys.
const plantedSecret = "planted-secret-3f9c2e71b8a4"

// syncBuffer is a log sink tests read while the engine writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()

	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()

	return b.buf.String()
}

// secretsOf lists what must never appear in clear: the planted string, and the private keys and tokens the
// configurations really hold (as stored, base64, and their PEM bodies).
func secretsOf(t *testing.T, creds cluster.CredentialsSpec) []string {
	t.Helper()

	secrets := []string{plantedSecret}

	addKey := func(encoded string, raw []byte) {
		if encoded != "" {
			secrets = append(secrets, encoded)
		}

		// The longest line of a PEM body is a 64-character slice of the key: distinctive, and what a log or a
		// hex-free dump of the decoded key would show.
		for line := range strings.Lines(string(raw)) {
			if line = strings.TrimSpace(line); len(line) == 64 && !strings.HasPrefix(line, "-----") {
				secrets = append(secrets, line)

				break
			}
		}
	}

	talosconfig, err := clientconfig.FromString(creds.Talosconfig)
	require.NoError(t, err)

	for _, ctx := range talosconfig.Contexts {
		raw, err := base64.StdEncoding.DecodeString(ctx.Key)
		require.NoError(t, err)
		addKey(ctx.Key, raw)
	}

	kubeconfig, err := clientcmd.Load([]byte(creds.Kubeconfig))
	require.NoError(t, err)

	for _, user := range kubeconfig.AuthInfos {
		if len(user.ClientKeyData) > 0 {
			addKey(base64.StdEncoding.EncodeToString(user.ClientKeyData), user.ClientKeyData)
		}

		if user.Token != "" {
			secrets = append(secrets, user.Token)
		}
	}

	require.Greater(t, len(secrets), 2, "the fleet's configurations hold keys to look for")

	return secrets
}

// machineSecretsOf is what a machine's config holds that must never be seen: its join token, the cluster's
// bootstrap token and secretbox secret, and a line of the keys of its CA and etcd's (as secretsOf takes of a key).
func machineSecretsOf(t *testing.T, cfg talosconfig.Provider) []string {
	t.Helper()

	secrets := []string{cfg.Machine().Security().Token(), cfg.Cluster().Token().Secret(), cfg.Cluster().SecretboxEncryptionSecret()}

	for _, ca := range []*x509.PEMEncodedCertificateAndKey{cfg.Machine().Security().IssuingCA(), cfg.Cluster().Etcd().CA()} {
		if ca == nil {
			continue
		}

		for line := range strings.Lines(string(ca.Key)) {
			if line = strings.TrimSpace(line); len(line) == 64 && !strings.HasPrefix(line, "-----") {
				secrets = append(secrets, line)

				break
			}
		}
	}

	return slices.DeleteFunc(secrets, func(s string) bool { return s == "" })
}

// requireNoSecret fails if any secret is in text, naming where it was found.
func requireNoSecret(t *testing.T, where, text string, secrets []string) {
	t.Helper()

	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("a secret (%.12s…) is in clear in %s", s, where)
		}
	}
}

// TestSecretsNeverInClear plants a known secret in a cluster's credentials, next to the real keys the emulated
// fleet handed out, runs a real upgrade with them, and then looks for all of them everywhere a user or an
// attacker with the disk could: every file of the engine's data dir byte for byte, the engine's and the fleet's
// logs, `get` in every output format of every type, `history` of every resource, and the error of a refused
// write. Only an explicit --show-secrets reads them back (which also proves the search finds them).
func TestSecretsNeverInClear(t *testing.T) {
	supported := talosemu.SupportedVersions()
	from, to := supported[len(supported)-2], supported[len(supported)-1]

	logs := &syncBuffer{}
	logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.AddSync(logs), zap.DebugLevel))

	bed := startBed(t, testbed.WithLogger(logger), testbed.WithFleetOptions(
		talosemu.WithControlPlanes(1), talosemu.WithWorkers(1), talosemu.WithTalosVersion(from),
		talosemu.WithRebootDowntime(rebootDowntime),
	))
	st := bed.State()
	ctx := t.Context()

	// Plant the secret in both configurations (as YAML comments, so both keep working) through the CLI, as a
	// user rotating credentials would.
	creds, err := safe.StateGet[*cluster.Credentials](ctx, st, cluster.NewCredentials("c1").Metadata())
	require.NoError(t, err)

	planted := *creds.TypedSpec()
	planted.Talosconfig = "# " + plantedSecret + "\n" + planted.Talosconfig
	planted.Kubeconfig = "# " + plantedSecret + "\n" + planted.Kubeconfig
	secrets := secretsOf(t, planted)

	applyFile := filepath.Join(t.TempDir(), "credentials.yaml")
	require.NoError(t, os.WriteFile(applyFile, []byte(credentialsDocument(planted)), 0o600))
	assert.Contains(t, mustCLI(t, bed, "apply", "-f", applyFile), "credential/c1 configured")
	assert.Contains(t, mustCLI(t, bed, "apply", "-f", applyFile), "credential/c1 unchanged", "apply compares with the stored secret")

	// The machines' configs hold their secrets too (the engine keeps each machine's first-seen config as the base
	// of its config patches): the token, the cluster secret and the keys of the machine's CAs.
	for _, n := range bed.Fleet.Nodes() {
		waitFor(t, st, upgrade.NewMachineConfigStatus(n.Name()).Metadata(), time.Minute, n.Name()+"'s config read",
			func(s *upgrade.MachineConfigStatus) bool { return s.TypedSpec().AppliedVersion != "" })

		secrets = append(secrets, machineSecretsOf(t, n.Config())...)
	}

	waitObserved(t, bed, from)
	mustCLI(t, bed, "upgrade", "talos", "c1", "--to", "v"+to)
	waitTalos(t, st, "c1", 3*time.Minute, "the upgrade to finish", phaseIs(upgrade.PhaseDone, to))

	// A refused write of a malformed secret names the field, never the text.
	badFile := filepath.Join(t.TempDir(), "bad.yaml")
	require.NoError(t, os.WriteFile(badFile, []byte(credentialsDocument(cluster.CredentialsSpec{
		Talosconfig: "context: [" + plantedSecret, Kubeconfig: "{" + plantedSecret,
	})), 0o600))

	out, errOut, err := cli(t, bed, "apply", "-f", badFile)
	require.Error(t, err)
	assert.Contains(t, errOut, "spec.talosconfig")
	requireNoSecret(t, "the error of a refused apply", out+errOut, secrets)

	// What the API shows.
	table := mustCLI(t, bed, "get", "credentials")
	assert.Contains(t, table, resources.Redacted, "get says which secrets are set")
	assert.Contains(t, table, "ROTATED")

	for _, r := range catalog.All() {
		typ := r.ResourceDefinition().Type

		var ids []string

		for _, output := range []string{"table", "yaml", "json"} {
			out := mustCLI(t, bed, "get", typ, "-o", output)
			requireNoSecret(t, "get "+typ+" -o "+output, out, secrets)
		}

		list, err := st.List(ctx, resources.New(r, "").Metadata())
		require.NoError(t, err)

		for _, res := range list.Items {
			ids = append(ids, res.Metadata().ID())
		}

		for _, id := range ids {
			requireNoSecret(t, "get "+typ+" "+id+" -o yaml", mustCLI(t, bed, "get", typ, id, "-o", "yaml"), secrets)
			requireNoSecret(t, "history "+typ+" "+id, mustCLI(t, bed, "history", typ, id), secrets)
		}
	}

	shown := mustCLI(t, bed, "get", "credentials", "c1", "-o", "yaml", "--show-secrets")
	assert.Contains(t, shown, plantedSecret, "--show-secrets reads the secret back")

	// The disk: every file the engine keeps, once it has stopped and written everything.
	require.NoError(t, bed.StopEngine())

	require.NoError(t, filepath.WalkDir(bed.EngineDir(), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}

		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}

		requireNoSecret(t, path, string(data), secrets)

		return nil
	}))

	requireNoSecret(t, "the engine's and the fleet's logs", logs.String(), secrets)
	assert.NotEmpty(t, logs.String(), "the logs were captured")
}

// credentialsDocument is an apply file of c1's Credentials.
func credentialsDocument(spec cluster.CredentialsSpec) string {
	indent := func(s string) string {
		return "      " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n      ") + "\n"
	}

	return "metadata:\n  type: Credentials\n  id: c1\nspec:\n" +
		"  talosconfig: |\n" + indent(spec.Talosconfig) +
		"  kubeconfig: |\n" + indent(spec.Kubeconfig)
}
