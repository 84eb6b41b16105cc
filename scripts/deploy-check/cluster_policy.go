// Policy across the objects of one kustomize build: disruption budgets for replicated
// Deployments, no literal Secrets in prod, and default-deny networking in our namespaces.
package main

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// buildPolicy checks one build's objects together; prod turns on the prod-only rules.
func buildPolicy(objs []Object, prod bool) []string {
	found := disruptionBudgets(objs, prod)
	if prod {
		found = append(found, noLiteralSecrets(objs)...)
	}
	return append(found, defaultDeny(objs)...)
}

// disruptionBudgets: a Deployment that must stay up through a node drain (more than one
// replica, or anything in prod) has a PodDisruptionBudget selecting its pods.
func disruptionBudgets(objs []Object, prod bool) []string {
	var found []string
	for _, obj := range objs {
		d, ok := obj.Obj.(*appsv1.Deployment)
		if !ok {
			continue
		}
		replicas := int32(1)
		if d.Spec.Replicas != nil {
			replicas = *d.Spec.Replicas
		}
		if replicas <= 1 && !prod {
			continue
		}
		if !hasBudget(objs, obj.Namespace, d.Spec.Template.Labels) {
			found = append(found, fmt.Sprintf("%s (%d replicas) has no PodDisruptionBudget whose selector matches its pod labels %v", obj, replicas, d.Spec.Template.Labels))
		}
	}
	return found
}

func hasBudget(objs []Object, namespace string, podLabels map[string]string) bool {
	for _, obj := range objs {
		pdb, ok := obj.Obj.(*policyv1.PodDisruptionBudget)
		if !ok || obj.Namespace != namespace || pdb.Spec.Selector == nil {
			continue
		}
		selector, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		// An empty selector selects every pod of the namespace, which is a budget too.
		if err == nil && selector.Matches(labels.Set(podLabels)) {
			return true
		}
	}
	return false
}

// noLiteralSecrets: in prod, secrets come by reference (created out of band, or synced by an
// operator), never as values in the repository.
func noLiteralSecrets(objs []Object) []string {
	var found []string
	for _, obj := range objs {
		s, ok := obj.Obj.(*corev1.Secret)
		if ok && (len(s.Data) > 0 || len(s.StringData) > 0) {
			found = append(found, fmt.Sprintf("%s has literal data/stringData in the prod overlay; reference the secret instead", obj))
		}
	}
	return found
}

// defaultDeny: every Namespace we create has a NetworkPolicy that selects all its pods and
// allows nothing in either direction, so traffic is only what other policies allow.
func defaultDeny(objs []Object) []string {
	var found []string
	for _, obj := range objs {
		if _, ok := obj.Obj.(*corev1.Namespace); !ok {
			continue
		}
		if !hasDefaultDeny(objs, obj.Name) {
			found = append(found, fmt.Sprintf("%s has no default-deny NetworkPolicy (podSelector {}, policyTypes Ingress and Egress, no rules)", obj))
		}
	}
	return found
}

func hasDefaultDeny(objs []Object, namespace string) bool {
	for _, obj := range objs {
		np, ok := obj.Obj.(*networkingv1.NetworkPolicy)
		if ok && obj.Namespace == namespace && isDefaultDeny(np.Spec) {
			return true
		}
	}
	return false
}

func isDefaultDeny(spec networkingv1.NetworkPolicySpec) bool {
	selector := spec.PodSelector
	if len(selector.MatchLabels) > 0 || len(selector.MatchExpressions) > 0 {
		return false
	}
	var ingress, egress bool
	for _, t := range spec.PolicyTypes {
		ingress = ingress || t == networkingv1.PolicyTypeIngress
		egress = egress || t == networkingv1.PolicyTypeEgress
	}
	return ingress && egress && len(spec.Ingress) == 0 && len(spec.Egress) == 0
}
