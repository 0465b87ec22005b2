package validate_test

import (
	"errors"
	"reflect"
	"testing"
	"unicode/utf8"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/state"
	"go.yaml.in/yaml/v4"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/catalog"
	"github.com/upshift-io/upshift/state/validate"
)

// inputTypes are the types users write: the ones the validating wrapper checks.
func inputTypes() []meta.ResourceWithRD {
	var inputs []meta.ResourceWithRD

	for _, r := range catalog.All() {
		if resources.IsInput(resources.New(r, "")) {
			inputs = append(inputs, r)
		}
	}

	return inputs
}

// FuzzValidate writes an input of any type, id and spec (YAML into the typed spec, as apply decodes it) through
// the validating wrapper, as a create or as an update of what the state holds: nothing panics; a refusal is a
// validation error naming a field for each problem, or another error, and leaves the state as it was; a
// validation error survives the trip through a gRPC status.
func FuzzValidate(f *testing.F) {
	f.Add(uint8(0), "new", []byte("talosVersion: v1.14.1\nkubernetesVersion: v1.37.2\nparallelism: 50%\n"), false)
	f.Add(uint8(0), "prod", []byte("talosVersion: 1.x\nkubernetesVersion: v1.99.0\nparallelism: 0\n"), true)
	f.Add(uint8(1), "prod", []byte("talosconfig: \"context: x\"\n"), false)
	f.Add(uint8(2), "w-1", []byte("cluster: other\nrole: worker\nendpoint: 10.0.0.5:50000\n"), true)
	f.Add(uint8(2), "Bad Name/x", []byte("cluster: prod\nrole: king\nendpoint: ':'\n"), false)
	f.Add(uint8(3), "cp-1", []byte("reason: payroll\n"), false)
	f.Add(uint8(4), "p", []byte("cluster: prod\nrole: worker\npatch: '{'\n"), false)
	f.Add(uint8(5), "prod", []byte("requestID: r1\nprune: true\n"), false)
	f.Add(uint8(0), "\xff", []byte("talosVersion: \"\\xff\"\n"), false)

	inputs := inputTypes()

	f.Fuzz(func(t *testing.T, typ uint8, id string, spec []byte, update bool) {
		st := newState(t)
		ctx := t.Context()
		r := resources.New(inputs[int(typ)%len(inputs)], id)

		if err := yaml.Unmarshal(spec, r.Spec()); err != nil {
			return // apply refuses such a document before validation
		}

		before, _ := st.Get(ctx, r.Metadata()) //nolint:errcheck // absent is fine

		var err error

		if update && before != nil {
			r.Metadata().SetVersion(before.Metadata().Version())
			err = st.Update(ctx, r)
		} else {
			err = st.Create(ctx, r)
		}

		if err == nil {
			return
		}

		var verr *validate.Error
		if errors.As(err, &verr) {
			if len(verr.Violations) == 0 {
				t.Fatalf("a validation error without violations: %v", err)
			}

			for _, v := range verr.Violations {
				if v.Field == "" || v.Problem == "" {
					t.Fatalf("a violation without field or problem: %+v", v)
				}
			}

			roundTrip(t, verr)
		}

		after, getErr := st.Get(ctx, r.Metadata())

		switch {
		case before == nil && !state.IsNotFoundError(getErr):
			t.Fatalf("a refused create left %v (%v)", after, getErr)
		case before != nil && (getErr != nil || !resource.Equal(before, after)):
			t.Fatalf("a refused update changed %s (%v)", resource.String(before), getErr)
		}
	})
}

// roundTrip checks that a validation error reaches a gRPC client as the same error.
func roundTrip(t *testing.T, verr *validate.Error) {
	t.Helper()

	st, ok := validate.ToStatus(verr)
	if !ok {
		t.Fatal("ToStatus does not take a validation error")
	}

	back := validate.FromStatus(st)
	if back == nil {
		t.Fatalf("validation error lost through a gRPC status: %#v", verr)
	}

	valid := utf8.ValidString(verr.Type) && utf8.ValidString(verr.ID)
	for _, v := range verr.Violations {
		valid = valid && utf8.ValidString(v.Field) && utf8.ValidString(v.Problem)
	}

	if valid && !reflect.DeepEqual(back, error(verr)) {
		t.Fatalf("validation error changed through a gRPC status: %#v -> %#v", verr, back)
	}
}
