// Validate objects as the Kubernetes API server would, without running one.
//
// Usage: apivalidate CRDS.yaml OBJECTS.json   (OBJECTS.json: a JSON list of objects)
//
//	apivalidate -quantities QUANTITIES.json (a JSON list of strings; prints them as stored)
//
// Core kinds (ServiceAccount, Service, Deployment): strict decoding (unknown fields are errors),
// defaulting, conversion and the API server's own validation code; for a Deployment also the Pod
// Security Standards "restricted" level. Custom resources (the Istio CRDs in CRDS.yaml): unknown
// fields (what the API server would prune), the OpenAPI schema, the CEL rules, and metadata.
// Core kinds are also compared with what the server would store: a field we set that the server
// normalizes (a quantity like 1000m stored as 1) is reported as "normalized".
// Prints one line per object (OK or INVALID, followed by the errors); exit status 1 if any is
// invalid. Built by tests/unit/builders/test_builders_apivalidate.py against the module versions
// of operator/mlsec/local/go/go.mod (the same Kubernetes the local environment runs).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsinternal "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	serjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	"k8s.io/kubernetes/pkg/apis/apps"
	_ "k8s.io/kubernetes/pkg/apis/apps/install"
	appsvalidation "k8s.io/kubernetes/pkg/apis/apps/validation"
	"k8s.io/kubernetes/pkg/apis/core"
	_ "k8s.io/kubernetes/pkg/apis/core/install"
	corevalidation "k8s.io/kubernetes/pkg/apis/core/validation"
	psaapi "k8s.io/pod-security-admission/api"
	psapolicy "k8s.io/pod-security-admission/policy"
)

type crdVersion struct {
	structural *structuralschema.Structural
	validator  apiservervalidation.SchemaValidator
	cel        *cel.Validator
}

func loadCRDs(path string) map[string]crdVersion {
	out := map[string]crdVersion{}
	data, err := os.ReadFile(path)
	must(err)
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var crd apiextensionsv1.CustomResourceDefinition
		err := dec.Decode(&crd)
		if err == io.EOF {
			break
		}
		must(err)
		if crd.Kind != "CustomResourceDefinition" {
			continue
		}
		for _, v := range crd.Spec.Versions {
			var internal apiextensionsinternal.JSONSchemaProps
			must(apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v.Schema.OpenAPIV3Schema, &internal, nil))
			s, err := structuralschema.NewStructural(&internal)
			must(err)
			val, _, err := apiservervalidation.NewSchemaValidator(&internal)
			must(err)
			key := crd.Spec.Group + "/" + v.Name + "/" + crd.Spec.Names.Kind
			out[key] = crdVersion{s, val, cel.NewValidator(s, true, celconfig.PerCallLimit)}
		}
	}
	return out
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func strictDecode(raw []byte, into runtime.Object) error {
	s := serjson.NewSerializerWithOptions(serjson.DefaultMetaFactory, legacyscheme.Scheme, legacyscheme.Scheme, serjson.SerializerOptions{Strict: true})
	_, _, err := s.Decode(raw, nil, into)
	return err
}

// subset reports where “ours“ is not contained in “server“ (the object after decoding and
// defaulting, as the API server stores it): a field the server normalizes would never compare
// equal to what we built.
func subset(ours, server interface{}, path string) []string {
	switch o := ours.(type) {
	case map[string]interface{}:
		s, ok := server.(map[string]interface{})
		if !ok {
			return []string{fmt.Sprintf("normalized: %s: ours %v, stored %v", path, ours, server)}
		}
		var out []string
		for k, v := range o {
			out = append(out, subset(v, s[k], path+"."+k)...)
		}
		return out
	case []interface{}:
		s, ok := server.([]interface{})
		if !ok || len(s) != len(o) {
			return []string{fmt.Sprintf("normalized: %s: ours %v, stored %v", path, ours, server)}
		}
		var out []string
		for i := range o {
			out = append(out, subset(o[i], s[i], fmt.Sprintf("%s[%d]", path, i))...)
		}
		return out
	default:
		a, _ := json.Marshal(ours)
		b, _ := json.Marshal(server)
		if !bytes.Equal(a, b) {
			return []string{fmt.Sprintf("normalized: %s: ours %s, stored %s", path, a, b)}
		}
		return nil
	}
}

func roundTrip(raw []byte, defaulted runtime.Object) []string {
	var ours, stored interface{}
	must(json.Unmarshal(raw, &ours))
	b, err := json.Marshal(defaulted)
	must(err)
	must(json.Unmarshal(b, &stored))
	return subset(ours, stored, "")
}

func validateCore(raw []byte, kind string) []string {
	var errs field.ErrorList
	var defaulted runtime.Object
	switch kind {
	case "Deployment":
		var v appsv1.Deployment
		if err := strictDecode(raw, &v); err != nil {
			return []string{"decode: " + err.Error()}
		}
		legacyscheme.Scheme.Default(&v)
		defaulted = v.DeepCopyObject()
		var in apps.Deployment
		must(legacyscheme.Scheme.Convert(&v, &in, nil))
		errs = appsvalidation.ValidateDeployment(&in, corevalidation.PodValidationOptions{})
		// Pod Security Standards, restricted level
		ev, err := psapolicy.NewEvaluator(psapolicy.DefaultChecks(), nil)
		must(err)
		res := ev.EvaluatePod(psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()}, &v.Spec.Template.ObjectMeta, &v.Spec.Template.Spec)
		for _, r := range res {
			if !r.Allowed {
				errs = append(errs, field.Forbidden(field.NewPath("podSecurity"), r.ForbiddenReason+": "+r.ForbiddenDetail))
			}
		}
	case "Service":
		var v corev1.Service
		if err := strictDecode(raw, &v); err != nil {
			return []string{"decode: " + err.Error()}
		}
		legacyscheme.Scheme.Default(&v)
		defaulted = v.DeepCopyObject()
		var in core.Service
		must(legacyscheme.Scheme.Convert(&v, &in, nil))
		errs = corevalidation.ValidateServiceCreate(&in)
	case "ServiceAccount":
		var v corev1.ServiceAccount
		if err := strictDecode(raw, &v); err != nil {
			return []string{"decode: " + err.Error()}
		}
		legacyscheme.Scheme.Default(&v)
		defaulted = v.DeepCopyObject()
		var in core.ServiceAccount
		must(legacyscheme.Scheme.Convert(&v, &in, nil))
		errs = corevalidation.ValidateServiceAccount(&in)
	default:
		return []string{"unknown core kind " + kind}
	}
	out := roundTrip(raw, defaulted)
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}

func validateCR(raw []byte, crds map[string]crdVersion) []string {
	var obj map[string]interface{}
	must(json.Unmarshal(raw, &obj))
	key := obj["apiVersion"].(string) + "/" + obj["kind"].(string)
	crd, ok := crds[key]
	if !ok {
		return []string{"no CRD for " + key}
	}
	var out []string
	pruned := pruning.PruneWithOptions(runtime.DeepCopyJSON(obj), crd.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})
	for _, p := range pruned {
		out = append(out, "unknown field (pruned): "+p)
	}
	for _, e := range apiservervalidation.ValidateCustomResource(nil, obj, crd.validator) {
		out = append(out, e.Error())
	}
	celErrs, _ := crd.cel.Validate(context.Background(), nil, crd.structural, obj, nil, celconfig.RuntimeCELCostBudget)
	for _, e := range celErrs {
		out = append(out, "cel: "+e.Error())
	}
	var meta metav1.ObjectMeta
	mb, _ := json.Marshal(obj["metadata"])
	must(json.Unmarshal(mb, &meta))
	for _, e := range validation.ValidateObjectMeta(&meta, true, validation.NameIsDNSSubdomain, field.NewPath("metadata")) {
		out = append(out, e.Error())
	}
	return out
}

// quantities prints, for each string of a JSON list, the quantity as the API server stores it
// (ParseQuantity, then MarshalJSON), or "error: ..." if it is none.
func quantities(path string) {
	data, err := os.ReadFile(path)
	must(err)
	var in []string
	must(json.Unmarshal(data, &in))
	out := make([]string, len(in))
	for i, s := range in {
		q, err := resource.ParseQuantity(s)
		if err != nil {
			out[i] = "error: " + err.Error()
			continue
		}
		b, err := q.MarshalJSON()
		must(err)
		must(json.Unmarshal(b, &out[i]))
	}
	b, err := json.Marshal(out)
	must(err)
	fmt.Println(string(b))
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "-quantities" {
		quantities(os.Args[2])
		return
	}
	crds := loadCRDs(os.Args[1])
	data, err := os.ReadFile(os.Args[2])
	must(err)
	var objs []json.RawMessage
	must(json.Unmarshal(data, &objs))
	bad := 0
	for _, raw := range objs {
		var head struct {
			APIVersion string                `json:"apiVersion"`
			Kind       string                `json:"kind"`
			Metadata   struct{ Name string } `json:"metadata"`
		}
		must(json.Unmarshal(raw, &head))
		var errs []string
		if strings.Contains(head.APIVersion, "istio.io") {
			errs = validateCR(raw, crds)
		} else {
			errs = validateCore(raw, head.Kind)
		}
		status := "OK"
		if len(errs) > 0 {
			status = "INVALID"
			bad++
		}
		fmt.Printf("%-8s %s %s %s\n", status, head.APIVersion, head.Kind, head.Metadata.Name)
		for _, e := range errs {
			fmt.Println("    ", e)
		}
	}
	if bad > 0 {
		os.Exit(1)
	}
}
