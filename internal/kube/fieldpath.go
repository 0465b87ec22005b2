package kube

import (
	"encoding/json"
	"strconv"
	"strings"
)

// indexedPath turns a field path of the API server's managed-fields form
// (`.spec.template.spec.containers[name="kube-proxy"].args`) into the form people read in YAML
// (`spec.template.spec.containers[0].args`), by finding each keyed list element in the live object. A segment it
// cannot resolve is kept as the server wrote it.
func indexedPath(live map[string]any, path string) string {
	var (
		out     strings.Builder
		current any = live
	)

	for _, seg := range splitPath(path) {
		if key, ok := strings.CutPrefix(seg, "."); ok {
			if out.Len() > 0 {
				out.WriteByte('.')
			}

			out.WriteString(key)

			m, _ := current.(map[string]any)
			current = m[key]

			continue
		}

		list, _ := current.([]any)
		index := elementIndex(list, strings.TrimSuffix(strings.TrimPrefix(seg, "["), "]"))

		if index < 0 {
			out.WriteString(seg)

			current = nil

			continue
		}

		out.WriteString("[" + strconv.Itoa(index) + "]")

		current = list[index]
	}

	return out.String()
}

// splitPath splits a managed-fields path into ".field" and "[selector]" segments; quoted values may hold any
// character.
func splitPath(path string) []string {
	var (
		segs   []string
		start  int
		quoted bool
	)

	for i := 0; i < len(path); i++ {
		switch c := path[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && (c == '.' || c == '[') && i > start:
			segs = append(segs, path[start:i])
			start = i
		}
	}

	if start < len(path) {
		segs = append(segs, path[start:])
	}

	return segs
}

// elementIndex is the index of the element of list a selector names: `name="x"`, `port=53,protocol="UDP"`, or
// `="value"` for a set; -1 when none matches.
func elementIndex(list []any, selector string) int {
	want := map[string]string{}

	for _, pair := range splitSelector(selector) {
		key, value, _ := strings.Cut(pair, "=")
		want[key] = canonical(value)
	}

	for i, element := range list {
		if matches(element, want) {
			return i
		}
	}

	return -1
}

func matches(element any, want map[string]string) bool {
	if value, ok := want[""]; ok && len(want) == 1 {
		return encode(element) == value
	}

	m, ok := element.(map[string]any)
	if !ok {
		return false
	}

	for key, value := range want {
		if encode(m[key]) != value {
			return false
		}
	}

	return true
}

// splitSelector splits a selector on the commas outside quotes.
func splitSelector(s string) []string {
	var (
		parts  []string
		start  int
		quoted bool
	)

	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			quoted = !quoted
		case ',':
			if !quoted {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}

	return append(parts, s[start:])
}

// canonical re-encodes a JSON value so that equal values compare equal as strings.
func canonical(raw string) string {
	var v any
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return raw
	}

	return encode(v)
}

func encode(v any) string {
	if n, ok := v.(int64); ok {
		v = float64(n)
	}

	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}

	return string(b)
}
