package applyfile_test

import (
	"testing"

	"github.com/upshift-io/upshift/internal/applyfile"
	"github.com/upshift-io/upshift/resources"
)

// FuzzDecode: any bytes either decode into typed input resources, each with its source, or give errors; nothing
// panics, and nothing but an input type comes out.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		"metadata:\n  type: Cluster\n  id: prod\nspec:\n  talosVersion: v1.14.1\n  kubernetesVersion: v1.35.0\n",
		"metadata:\n  type: Machine\n  id: cp-1\nspec:\n  cluster: prod\n  role: controlplane\n  endpoint: 10.0.0.1:50000\n---\n" +
			"metadata:\n  type: lock\n  id: cp-1\nspec:\n  reason: payroll\n",
		"metadata:\n  type: Credentials\n  id: prod\n  labels: {a: b}\n  annotations: {c: d}\n  version: 3\nspec:\n  talosconfig: |\n    context: x\n",
		"metadata:\n  type: MachineStatus\n  id: x\nspec: {}\n",
		"metadata: {type: Cluster, id: a}\nspec: {bogus: 1}\n",
		"metadata: {type: Cluster, id: a, namespace: other}\nspec: {}\n",
		"---\n---\n",
		"- just\n- a list\n",
		"metadata: &a [*a]\n",
		"spec: !!binary aGk=\nmetadata: {type: Cluster, id: a}\n",
		"{{{",
		"",
	} {
		f.Add([]byte(seed))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		docs, problems, err := applyfile.Decode("fuzz.yaml", data)
		if err != nil {
			return
		}

		for _, doc := range docs {
			if doc.Resource == nil || doc.Source == "" {
				t.Fatalf("decoded a document without resource or source: %+v", doc)
			}

			if !resources.IsInput(doc.Resource) {
				t.Fatalf("decoded %s, which is not an input type", doc.Resource.Metadata().Type())
			}

			if doc.Resource.Metadata().Namespace() != resources.Namespace {
				t.Fatalf("decoded a resource in namespace %q", doc.Resource.Metadata().Namespace())
			}
		}

		for _, p := range problems {
			if p == nil || p.Error() == "" {
				t.Fatal("a problem without a message")
			}
		}
	})
}
