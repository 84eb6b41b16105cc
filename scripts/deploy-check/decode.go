// Strict decoding of Kubernetes objects into their official Go types: the scheme of every
// API group our manifests may use, and the splitting of multi-document files.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	cnpgv1 "github.com/cloudnative-pg/cloudnative-pg/api/v1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	nodev1 "k8s.io/api/node/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// Only GA versions are registered: a beta version the cluster may stop serving should fail
// here rather than at deploy time. Add a CRD's Go types here (see README.md).
var schemeBuilder = runtime.SchemeBuilder{
	admissionregistrationv1.AddToScheme,
	appsv1.AddToScheme,
	autoscalingv1.AddToScheme,
	autoscalingv2.AddToScheme,
	batchv1.AddToScheme,
	coordinationv1.AddToScheme,
	corev1.AddToScheme,
	discoveryv1.AddToScheme,
	networkingv1.AddToScheme,
	nodev1.AddToScheme,
	policyv1.AddToScheme,
	rbacv1.AddToScheme,
	schedulingv1.AddToScheme,
	storagev1.AddToScheme,
	cnpgv1.AddToScheme,
	gatewayv1.Install,
	monitoringv1.AddToScheme,
}

// Decoder decodes objects strictly: unknown fields, duplicate fields and unregistered kinds
// are errors, so a typo cannot pass as an ignored field.
type Decoder struct {
	decoder runtime.Decoder
}

// NewDecoder builds the scheme; an error means a type registered twice inconsistently.
func NewDecoder() (*Decoder, error) {
	scheme := runtime.NewScheme()
	if err := schemeBuilder.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("building the scheme: %w", err)
	}
	// The universal deserializer neither converts nor defaults: what is checked is what the
	// file says.
	codecs := serializer.NewCodecFactory(scheme, serializer.EnableStrict)
	return &Decoder{decoder: codecs.UniversalDeserializer()}, nil
}

// Object is one decoded object and the identity used in messages.
type Object struct {
	Obj       runtime.Object
	GVK       schema.GroupVersionKind
	Namespace string
	Name      string
}

func (o Object) String() string {
	if o.Namespace == "" {
		return fmt.Sprintf("%s %s", o.GVK.Kind, o.Name)
	}
	return fmt.Sprintf("%s %s/%s", o.GVK.Kind, o.Namespace, o.Name)
}

// header is read leniently first so an error can name the object it is about.
type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// readHeader returns the document's apiVersion, kind, name and namespace, leniently.
func readHeader(doc []byte) (header, error) {
	var h header
	err := yaml.Unmarshal(doc, &h)
	return h, err
}

// Decode strictly decodes one YAML or JSON document.
func (d *Decoder) Decode(doc []byte) (Object, error) {
	h, err := readHeader(doc)
	if err != nil {
		return Object{}, fmt.Errorf("not valid YAML: %w", err)
	}
	id := Object{GVK: schema.FromAPIVersionAndKind(h.APIVersion, h.Kind), Namespace: h.Metadata.Namespace, Name: h.Metadata.Name}
	if h.APIVersion == "" || h.Kind == "" {
		return id, fmt.Errorf("%s: missing apiVersion or kind", describe(id))
	}
	obj, gvk, err := d.decoder.Decode(doc, nil, nil)
	switch {
	case runtime.IsNotRegisteredError(err):
		return id, fmt.Errorf("%s: unknown apiVersion/kind %s %s (not in the checker's scheme)", describe(id), h.APIVersion, h.Kind)
	case err != nil:
		// A strict decoding error comes with the object decoded anyway; it is still an error.
		return id, fmt.Errorf("%s: %w", describe(id), err)
	}
	id.Obj, id.GVK = obj, *gvk
	return id, nil
}

// describe names an object that may lack a kind or name.
func describe(o Object) string {
	kind, name := o.GVK.Kind, o.Name
	if kind == "" {
		kind = "object"
	}
	if name == "" {
		name = "(unnamed)"
	}
	return Object{GVK: schema.GroupVersionKind{Kind: kind}, Namespace: o.Namespace, Name: name}.String()
}

// splitDocuments splits a multi-document YAML (or JSON) stream, dropping documents that are
// only comments or blank, which `---` separators often leave.
func splitDocuments(data []byte) ([][]byte, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if !isBlankDocument(doc) {
			docs = append(docs, doc)
		}
	}
}

func isBlankDocument(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") && line != "---" {
			return false
		}
	}
	return true
}
