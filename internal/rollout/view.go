package rollout

// Unready says why a decision cannot be made from view yet (no machine, a machine not observed, a partial read),
// or "" when it can. The Kubernetes upgrade (internal/kuberollout) waits on the same view for the same reasons.
func Unready(view ClusterView) string { return unready(view) }
