package rollout

// Parallelism turns the number of workers in a cluster into how many of them may be in flight at once. The
// Cluster resource's parsed parallelism satisfies it; Count and Percent are the two kinds.
type Parallelism interface {
	Of(workers int) int
}

// Count is a fixed worker parallelism.
type Count int

// Of returns the count, never more than the workers there are, never less than 1.
func (c Count) Of(workers int) int { return max(1, min(int(c), workers)) }

// Percent is a worker parallelism given as a percentage of the cluster's workers.
type Percent int

// Of returns p percent of workers rounded down (a percentage is a disruption budget, and rounding up would
// exceed it), never less than 1 so a rollout always progresses, never more than the workers there are.
func (p Percent) Of(workers int) int {
	return max(1, min(workers*int(p)/100, workers))
}
