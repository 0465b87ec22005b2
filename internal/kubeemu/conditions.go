package kubeemu

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// conditionFields exposes what setCondition needs of a Node or Pod condition: its type, status and transition time.
type conditionFields[C any, T comparable] func(*C) (T, corev1.ConditionStatus, *metav1.Time)

func nodeConditionFields(c *corev1.NodeCondition) (corev1.NodeConditionType, corev1.ConditionStatus, *metav1.Time) {
	return c.Type, c.Status, &c.LastTransitionTime
}

func podConditionFields(c *corev1.PodCondition) (corev1.PodConditionType, corev1.ConditionStatus, *metav1.Time) {
	return c.Type, c.Status, &c.LastTransitionTime
}

// setCondition replaces the condition of want's type (or appends want). If the status did not change, the old
// transition time is kept, so watchers see a transition only when there was one and a settled status stays equal.
func setCondition[C any, T comparable](conditions []C, want C, fields conditionFields[C, T]) []C {
	wantType, wantStatus, wantTransition := fields(&want)

	for i := range conditions {
		typ, status, transition := fields(&conditions[i])
		if typ != wantType {
			continue
		}

		if status == wantStatus {
			*wantTransition = *transition
		}

		conditions[i] = want

		return conditions
	}

	return append(conditions, want)
}
