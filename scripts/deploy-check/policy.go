// Per-object policy: what every workload's pod template must say (probes, resources, a
// hardened security context, pinned images), one small rule per requirement.
package main

import (
	"fmt"

	cnpgv1 "github.com/cloudnative-pg/cloudnative-pg/api/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
)

// podRule checks the pod as a whole; containerRule one container of it.
type (
	podRule       func(pod *corev1.PodSpec) []string
	containerRule func(pod *corev1.PodSpec, c *corev1.Container) []string
)

// Policy is the set of rules a kind of workload follows.
type Policy struct {
	pod []podRule
	// all applies to init containers too; main only to the containers that serve.
	all  []containerRule
	main []containerRule
}

// servicePolicy is for what keeps running (Deployments, StatefulSets, DaemonSets).
var servicePolicy = Policy{
	pod:  []podRule{runsAsNonRoot},
	all:  []containerRule{pinnedImage, resourcesSet, hardened},
	main: []containerRule{probesSet},
}

// batchPolicy is for what runs to completion (Jobs, CronJobs, bare Pods).
var batchPolicy = Policy{
	pod: []podRule{runsAsNonRoot},
	all: []containerRule{pinnedImage, hardened},
}

// restrictedBatchPolicy adds what the `restricted` Pod Security Standard enforces and
// batchPolicy does not ask for, for the runner's Jobs, which land in namespaces enforcing it.
var restrictedBatchPolicy = Policy{
	pod: []podRule{runsAsNonRoot},
	all: []containerRule{pinnedImage, hardened, runtimeDefaultSeccomp},
}

// Apply runs the policy's rules on every pod template of obj; objects without one pass.
func (p Policy) Apply(obj Object) []string {
	pod := podSpecOf(obj)
	if pod == nil {
		return nil
	}
	var found []string
	for _, rule := range p.pod {
		found = append(found, rule(pod)...)
	}
	check := func(containers []corev1.Container, rules []containerRule) {
		for i := range containers {
			for _, rule := range rules {
				found = append(found, rule(pod, &containers[i])...)
			}
		}
	}
	check(pod.InitContainers, p.all)
	check(pod.Containers, p.all)
	check(pod.Containers, p.main)
	for i, msg := range found {
		found[i] = fmt.Sprintf("%s: %s", obj, msg)
	}
	return found
}

// policyFor picks the policy of an object's kind: services keep running, the rest finish.
func policyFor(obj Object, batch Policy) Policy {
	switch obj.Obj.(type) {
	case *appsv1.Deployment, *appsv1.StatefulSet, *appsv1.DaemonSet:
		return servicePolicy
	}
	return batch
}

// podSpecOf returns the pod template of a workload, or nil for other objects.
func podSpecOf(obj Object) *corev1.PodSpec {
	switch o := obj.Obj.(type) {
	case *appsv1.Deployment:
		return &o.Spec.Template.Spec
	case *appsv1.StatefulSet:
		return &o.Spec.Template.Spec
	case *appsv1.DaemonSet:
		return &o.Spec.Template.Spec
	case *batchv1.Job:
		return &o.Spec.Template.Spec
	case *batchv1.CronJob:
		return &o.Spec.JobTemplate.Spec.Template.Spec
	case *corev1.Pod:
		return &o.Spec
	}
	return nil
}

func runsAsNonRoot(pod *corev1.PodSpec) []string {
	if pod.SecurityContext == nil || !isTrue(pod.SecurityContext.RunAsNonRoot) {
		return []string{"pod securityContext does not set runAsNonRoot: true"}
	}
	return nil
}

func pinnedImage(_ *corev1.PodSpec, c *corev1.Container) []string {
	if p := imageProblem(c.Image); p != "" {
		return []string{fmt.Sprintf("container %q: %s", c.Name, p)}
	}
	return nil
}

func resourcesSet(_ *corev1.PodSpec, c *corev1.Container) []string {
	var found []string
	wanted := []struct {
		list corev1.ResourceList
		name corev1.ResourceName
		what string
	}{
		{c.Resources.Requests, corev1.ResourceCPU, "cpu request"},
		{c.Resources.Requests, corev1.ResourceMemory, "memory request"},
		{c.Resources.Limits, corev1.ResourceMemory, "memory limit"},
	}
	for _, w := range wanted {
		if _, ok := w.list[w.name]; !ok {
			found = append(found, fmt.Sprintf("container %q has no %s", c.Name, w.what))
		}
	}
	return found
}

func probesSet(_ *corev1.PodSpec, c *corev1.Container) []string {
	var found []string
	if c.LivenessProbe == nil {
		found = append(found, fmt.Sprintf("container %q has no livenessProbe", c.Name))
	}
	if c.ReadinessProbe == nil {
		found = append(found, fmt.Sprintf("container %q has no readinessProbe", c.Name))
	}
	return found
}

// hardened: no privilege escalation, no capabilities, nothing written outside volumes, and
// no container undoing the pod's runAsNonRoot.
func hardened(_ *corev1.PodSpec, c *corev1.Container) []string {
	sc := c.SecurityContext
	if sc == nil {
		return []string{fmt.Sprintf("container %q has no securityContext", c.Name)}
	}
	var found []string
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		found = append(found, fmt.Sprintf("container %q: allowPrivilegeEscalation is not false", c.Name))
	}
	if sc.Capabilities == nil || !dropsAll(sc.Capabilities.Drop) {
		found = append(found, fmt.Sprintf("container %q: capabilities do not drop ALL", c.Name))
	}
	if sc.Capabilities != nil && len(sc.Capabilities.Add) > 0 {
		found = append(found, fmt.Sprintf("container %q: capabilities add %v", c.Name, sc.Capabilities.Add))
	}
	if !isTrue(sc.ReadOnlyRootFilesystem) {
		found = append(found, fmt.Sprintf("container %q: readOnlyRootFilesystem is not true", c.Name))
	}
	if sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot {
		found = append(found, fmt.Sprintf("container %q: runAsNonRoot is false", c.Name))
	}
	if sc.Privileged != nil && *sc.Privileged {
		found = append(found, fmt.Sprintf("container %q is privileged", c.Name))
	}
	return found
}

// runtimeDefaultSeccomp: the container's profile, or else the pod's, is RuntimeDefault or
// Localhost, as the restricted Pod Security Standard requires.
func runtimeDefaultSeccomp(pod *corev1.PodSpec, c *corev1.Container) []string {
	var profile *corev1.SeccompProfile
	if pod.SecurityContext != nil {
		profile = pod.SecurityContext.SeccompProfile
	}
	if c.SecurityContext != nil && c.SecurityContext.SeccompProfile != nil {
		profile = c.SecurityContext.SeccompProfile
	}
	if profile == nil || (profile.Type != corev1.SeccompProfileTypeRuntimeDefault && profile.Type != corev1.SeccompProfileTypeLocalhost) {
		return []string{fmt.Sprintf("container %q: seccompProfile is not RuntimeDefault (or Localhost)", c.Name)}
	}
	return nil
}

// objectImages checks images set outside pod templates: a CNPG Cluster's imageName (unset
// means the operator's own pinned default).
func objectImages(obj Object) []string {
	if cluster, ok := obj.Obj.(*cnpgv1.Cluster); ok && cluster.Spec.ImageName != "" {
		if p := imageProblem(cluster.Spec.ImageName); p != "" {
			return []string{fmt.Sprintf("%s: %s", obj, p)}
		}
	}
	return nil
}

func dropsAll(drop []corev1.Capability) bool {
	for _, c := range drop {
		if c == "ALL" {
			return true
		}
	}
	return false
}

func isTrue(b *bool) bool { return b != nil && *b }
