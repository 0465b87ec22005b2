package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"go.yaml.in/yaml/v4"
	"k8s.io/client-go/util/jsonpath"
)

// printer writes resources in one output format; watch mode adds the event of each.
type printer interface {
	print(r resource.Resource, event string) error
	flush() error
}

// newPrinter returns the printer for format ("table", "yaml" or "json").
func newPrinter(format string, w io.Writer, rd *meta.ResourceDefinition, watch bool) (printer, error) {
	switch format {
	case "table":
		return newTablePrinter(w, rd, watch)
	case "yaml":
		return &yamlPrinter{w: w, watch: watch}, nil
	case "json":
		return &jsonPrinter{w: w, watch: watch}, nil
	default:
		return nil, fmt.Errorf("unknown output format %q (table, yaml or json)", format)
	}
}

// tablePrinter prints the columns talosctl prints (NAMESPACE TYPE ID VERSION) plus the type's print columns, and
// EVENT first in watch mode; for a sensitive type, ROTATED last. Column widths only grow, so rows printed as a watch goes on stay aligned with the
// header and the rows before them.
type tablePrinter struct {
	w       io.Writer
	columns []*jsonpath.JSONPath
	rows    [][]string // not yet flushed
	widths  []int
	watch   bool
	rotated bool // a sensitive type: the last write of a secret is when it was rotated
}

// columnGap separates table columns.
const columnGap = 3

func newTablePrinter(w io.Writer, rd *meta.ResourceDefinition, watch bool) (*tablePrinter, error) {
	p := &tablePrinter{w: w, watch: watch}

	var header []string
	if watch {
		header = append(header, "EVENT")
	}

	header = append(header, "NAMESPACE", "TYPE", "ID", "VERSION")

	for _, col := range rd.TypedSpec().PrintColumns {
		jp := jsonpath.New(col.Name).AllowMissingKeys(true)
		if err := jp.Parse(col.JSONPath); err != nil {
			return nil, fmt.Errorf("column %q of %s: %w", col.Name, rd.TypedSpec().Type, err)
		}

		p.columns = append(p.columns, jp)
		header = append(header, strings.ToUpper(col.Name))
	}

	if rd.TypedSpec().Sensitivity == meta.Sensitive {
		p.rotated = true
		header = append(header, "ROTATED")
	}

	p.rows = append(p.rows, header)

	return p, nil
}

func (p *tablePrinter) print(r resource.Resource, event string) error {
	md := r.Metadata()

	var row []string
	if p.watch {
		row = append(row, event)
	}

	row = append(row, md.Namespace(), displayTypeOf(md.Type()), md.ID(), md.Version().String())

	spec, err := specData(r)
	if err != nil {
		return err
	}

	for _, jp := range p.columns {
		var buf bytes.Buffer
		if err = jp.Execute(&buf, spec); err != nil {
			return fmt.Errorf("rendering column of %s: %w", resource.String(r), err)
		}

		row = append(row, buf.String())
	}

	if p.rotated {
		row = append(row, md.Updated().Local().Format(time.RFC3339))
	}

	p.rows = append(p.rows, row)

	return nil
}

func (p *tablePrinter) flush() error {
	for _, row := range p.rows {
		for i, cell := range row {
			if i == len(p.widths) {
				p.widths = append(p.widths, 0)
			}

			p.widths[i] = max(p.widths[i], len(cell))
		}
	}

	var out strings.Builder

	for _, row := range p.rows {
		for i, cell := range row {
			if i == len(row)-1 {
				out.WriteString(cell)

				break
			}

			out.WriteString(cell)
			out.WriteString(strings.Repeat(" ", p.widths[i]-len(cell)+columnGap))
		}

		out.WriteString("\n")
	}

	p.rows = p.rows[:0]

	_, err := io.WriteString(p.w, out.String())

	return err
}

// displayTypeOf turns "Clusters.upshift.dev" into "Cluster" for the TYPE column.
func displayTypeOf(typ resource.Type) string {
	rd := meta.ResourceDefinitionSpec{Type: typ}
	if err := rd.Fill(); err != nil {
		return typ
	}

	return rd.DisplayType
}

// specData is the spec as generic data (maps, slices, scalars), as its YAML rendering has it.
func specData(r resource.Resource) (any, error) {
	out, err := yaml.Marshal(r.Spec())
	if err != nil {
		return nil, fmt.Errorf("rendering %s: %w", resource.String(r), err)
	}

	var data any
	if err = yaml.Unmarshal(out, &data); err != nil {
		return nil, fmt.Errorf("rendering %s: %w", resource.String(r), err)
	}

	return data, nil
}

// document is a resource as the yaml and json outputs show it: the event (watch mode only), metadata and spec.
type document struct {
	Event    string             `yaml:"event,omitempty"`
	Metadata *resource.Metadata `yaml:"metadata"`
	Spec     any                `yaml:"spec"`
}

type yamlPrinter struct {
	w     io.Writer
	watch bool
	count int
}

func (p *yamlPrinter) print(r resource.Resource, event string) error {
	doc := document{Metadata: r.Metadata(), Spec: r.Spec()}
	if p.watch {
		doc.Event = event
	}

	var out bytes.Buffer

	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)

	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("rendering %s: %w", resource.String(r), err)
	}

	if p.count > 0 {
		if _, err := io.WriteString(p.w, "---\n"); err != nil {
			return err
		}
	}

	p.count++

	_, err := p.w.Write(out.Bytes())

	return err
}

func (p *yamlPrinter) flush() error { return nil }

type jsonPrinter struct {
	w     io.Writer
	watch bool
}

func (p *jsonPrinter) print(r resource.Resource, event string) error {
	doc := document{Metadata: r.Metadata(), Spec: r.Spec()}
	if p.watch {
		doc.Event = event
	}

	// JSON follows the YAML rendering, which is the one resources define.
	out, err := yaml.Marshal(doc)
	if err != nil {
		return fmt.Errorf("rendering %s: %w", resource.String(r), err)
	}

	var data map[string]any
	if err = yaml.Unmarshal(out, &data); err != nil {
		return fmt.Errorf("rendering %s: %w", resource.String(r), err)
	}

	enc := json.NewEncoder(p.w)
	enc.SetIndent("", "  ")

	return enc.Encode(data)
}

func (p *jsonPrinter) flush() error { return nil }
