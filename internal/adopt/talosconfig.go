package adopt

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// Access is how an import reaches the cluster through its talosconfig.
type Access struct {
	// Talosconfig holds only the chosen context, with the chosen endpoints: what the import connects with and what
	// the engine stores (a talosconfig's other contexts reach other clusters, whose keys the engine has no use for).
	Talosconfig []byte
	// Context is the chosen context's name.
	Context string
	// Ask are the context's nodes, the machines asked for the discovery members (none: the endpoint's own machine).
	Ask []string
	// Port is the Talos API port of the endpoints, which every machine of the cluster listens on.
	Port string
}

// ReadTalosconfig picks the context (contextName, else the talosconfig's current one) of a talosconfig, with
// endpoints in place of the context's own when given.
func ReadTalosconfig(data []byte, contextName string, endpoints []string) (Access, error) {
	cfg, err := clientconfig.FromBytes(data)
	if err != nil {
		// The parser's message may quote the text it chokes on: a key here.
		return Access{}, errors.New("it is not a talosconfig (YAML with contexts naming endpoints, CA, certificate and key)")
	}

	if contextName == "" {
		contextName = cfg.Context
	}

	if contextName == "" {
		return Access{}, fmt.Errorf("it has no current context: choose one with --context (%s)", contextNames(cfg))
	}

	ctx, ok := cfg.Contexts[contextName]
	if !ok {
		return Access{}, fmt.Errorf("it has no context %q (%s)", contextName, contextNames(cfg))
	}

	if len(endpoints) > 0 {
		ctx.Endpoints = endpoints
	}

	if len(ctx.Endpoints) == 0 {
		return Access{}, fmt.Errorf("its context %q names no endpoint: give the Talos API address of a control plane with --endpoints", contextName)
	}

	port, err := endpointsPort(ctx.Endpoints)
	if err != nil {
		return Access{}, err
	}

	only := &clientconfig.Config{Context: contextName, Contexts: map[string]*clientconfig.Context{contextName: ctx}}

	out, err := only.Bytes()
	if err != nil {
		return Access{}, fmt.Errorf("encoding the talosconfig of context %q: %w", contextName, err)
	}

	return Access{Talosconfig: out, Context: contextName, Ask: slices.Clone(ctx.Nodes), Port: port}, nil
}

// endpointsPort is the port the endpoints name (Talos' apid port when they name none); they must agree, as every
// machine's apid listens on the same port.
func endpointsPort(endpoints []string) (string, error) {
	port := ""

	for _, e := range endpoints {
		p := strconv.Itoa(constants.ApidPort)

		if host, hp, err := net.SplitHostPort(e); err == nil {
			if n, err := strconv.Atoi(hp); err != nil || n <= 0 || n > 65535 || host == "" {
				return "", fmt.Errorf("endpoint %q is not an address like 192.0.2.10:50000", e)
			}

			p = hp
		} else if e == "" || strings.ContainsAny(e, "/ ") {
			return "", fmt.Errorf("endpoint %q is not an address like 192.0.2.10:50000", e)
		}

		switch {
		case port == "":
			port = p
		case p != port:
			return "", fmt.Errorf("endpoints %s name different ports: every machine's Talos API listens on the same one", strings.Join(endpoints, ", "))
		}
	}

	return port, nil
}

func contextNames(cfg *clientconfig.Config) string {
	if len(cfg.Contexts) == 0 {
		return "it has none"
	}

	names := make([]string, 0, len(cfg.Contexts))
	for name := range cfg.Contexts {
		names = append(names, name)
	}

	slices.Sort(names)

	return "its contexts: " + strings.Join(names, ", ")
}
