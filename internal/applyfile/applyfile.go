// Package applyfile decodes the YAML files `upshift apply` reads into typed input resources. It is apart from the
// CLI so that the decoder, which reads whatever a user hands it, can be fuzzed on its own.
package applyfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"

	"github.com/cosi-project/runtime/pkg/resource"
	"go.yaml.in/yaml/v4"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/catalog"
)

// Document is one document of an apply file, decoded into its typed resource.
type Document struct {
	// Resource is the typed input resource the document describes.
	Resource resource.Resource
	// Source locates the document for messages: "FILE: document N (line L)".
	Source string
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

// Decode decodes every document of data, read from file (named in messages), into typed resources. It returns
// the documents it could decode and the problems of the others; it fails outright only when data is not YAML or
// holds no resource.
func Decode(file string, data []byte) ([]Document, []error, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))

	var (
		docs []Document
		errs []error
		seen = map[string]string{}
	)

	var err error

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
		docs = append(docs, Document{Resource: doc, Source: source})
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
		return nil, fmt.Errorf("metadata.type %q is not an upshift resource type (input types: %s)", md.Type, InputTypes())
	}

	r := resources.New(prototype, md.ID)
	if !resources.IsInput(r) {
		return nil, fmt.Errorf("%s is an output of the engine, written only by its controllers (input types: %s)",
			prototype.ResourceDefinition().Type, InputTypes())
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

// InputTypes lists the display names of the types users may write, for messages.
func InputTypes() string {
	var names []string

	for _, r := range catalog.All() {
		if resources.IsInput(resources.New(r, "")) {
			names = append(names, resources.DisplayType(r.ResourceDefinition().Type))
		}
	}

	return strings.Join(names, ", ")
}
