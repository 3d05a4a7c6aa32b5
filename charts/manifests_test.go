package charts

import (
	"bytes"
	"errors"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"
)

// helmBinary finds the helm CLI (scripts/install-test-deps installs v3.22.0 into GOBIN). A
// missing helm skips the chart tests locally and fails them in CI.
func helmBinary(t *testing.T) string {
	t.Helper()
	return requireTool(t, "helm", "GOFLAGS= go install helm.sh/helm/v3/cmd/helm@v3.22.0")
}

// requireTool finds name on PATH or in GOBIN (GOPATH/bin), which scripts/test puts on PATH but
// a plain `go test` may not have.
func requireTool(t *testing.T, name, install string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	dirs := []string{os.Getenv("GOBIN")}
	for _, gopath := range filepath.SplitList(build.Default.GOPATH) {
		dirs = append(dirs, filepath.Join(gopath, "bin"))
	}
	for _, dir := range dirs {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found (CI=true); scripts/install-test-deps installs it (%s)", name, install)
	}
	t.Skipf("%s not found; install it with scripts/install-test-deps (%s)", name, install)
	return ""
}

// helm runs the helm CLI and returns its stdout, or an error carrying its stderr.
func helm(helmPath string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(helmPath, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %w\n%s%s", strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	return stdout.String(), nil
}

// serviceMonitor is the part of the Prometheus Operator's monitoring.coreos.com/v1
// ServiceMonitor the chart uses, with the field names of its CRD; decoding into it strictly
// catches a misspelt or misplaced field.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Scheme        string `json:"scheme"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// manifests is one rendering of the chart, every document decoded into its API type.
type manifests struct {
	statefulSets    []*appsv1.StatefulSet
	services        map[string]*corev1.Service
	configMaps      map[string]*corev1.ConfigMap
	secrets         map[string]*corev1.Secret
	serviceAccounts map[string]*corev1.ServiceAccount
	pdbs            []*policyv1.PodDisruptionBudget
	ingresses       []*networkingv1.Ingress
	serviceMonitors []*serviceMonitor
	count           int
}

var documentSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeManifests splits helm's output into documents and decodes each strictly (unknown or
// duplicate fields are errors) into the type its apiVersion and kind name. A kind the chart is
// not expected to render is an error too. Every object's metadata is validated the way the
// API server validates it (names, namespace, labels, annotations).
func decodeManifests(rendered, namespace string) (*manifests, error) {
	m := &manifests{
		services:        map[string]*corev1.Service{},
		configMaps:      map[string]*corev1.ConfigMap{},
		secrets:         map[string]*corev1.Secret{},
		serviceAccounts: map[string]*corev1.ServiceAccount{},
	}
	var errs []error
	for i, doc := range documentSeparator.Split(rendered, -1) {
		if isBlankYAML(doc) {
			continue
		}
		source := fmt.Sprintf("document %d", i)
		if first, _, ok := strings.Cut(strings.TrimSpace(doc), "\n"); ok && strings.HasPrefix(first, "# Source: ") {
			source = strings.TrimPrefix(first, "# Source: ")
		}
		if err := m.decode(doc, namespace); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", source, err))
		}
	}
	return m, errors.Join(errs...)
}

func (m *manifests) decode(doc, namespace string) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
		return fmt.Errorf("not YAML: %w", err)
	}
	var (
		obj    any
		meta   *metav1.ObjectMeta
		nameFn = apivalidation.NameIsDNSSubdomain
		record func()
	)
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 StatefulSet":
		o := &appsv1.StatefulSet{}
		obj, meta, record = o, &o.ObjectMeta, func() { m.statefulSets = append(m.statefulSets, o) }
	case "v1 Service":
		o := &corev1.Service{}
		// Service names become DNS labels.
		obj, meta, nameFn, record = o, &o.ObjectMeta, apivalidation.NameIsDNS1035Label, func() { m.services[o.Name] = o }
	case "v1 ConfigMap":
		o := &corev1.ConfigMap{}
		obj, meta, record = o, &o.ObjectMeta, func() { m.configMaps[o.Name] = o }
	case "v1 Secret":
		o := &corev1.Secret{}
		obj, meta, record = o, &o.ObjectMeta, func() { m.secrets[o.Name] = o }
	case "v1 ServiceAccount":
		o := &corev1.ServiceAccount{}
		obj, meta, record = o, &o.ObjectMeta, func() { m.serviceAccounts[o.Name] = o }
	case "policy/v1 PodDisruptionBudget":
		o := &policyv1.PodDisruptionBudget{}
		obj, meta, record = o, &o.ObjectMeta, func() { m.pdbs = append(m.pdbs, o) }
	case "networking.k8s.io/v1 Ingress":
		o := &networkingv1.Ingress{}
		obj, meta, record = o, &o.ObjectMeta, func() { m.ingresses = append(m.ingresses, o) }
	case "monitoring.coreos.com/v1 ServiceMonitor":
		o := &serviceMonitor{}
		obj, meta, record = o, &o.ObjectMeta, func() { m.serviceMonitors = append(m.serviceMonitors, o) }
	default:
		return fmt.Errorf("unexpected apiVersion %q kind %q", tm.APIVersion, tm.Kind)
	}
	if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
		return fmt.Errorf("strict decode as %s %s: %w", tm.APIVersion, tm.Kind, err)
	}
	if errs := apivalidation.ValidateObjectMeta(meta, true, nameFn, field.NewPath("metadata")); len(errs) > 0 {
		return errs.ToAggregate()
	}
	if meta.Namespace != namespace {
		return fmt.Errorf("namespace %q, want the release namespace %q", meta.Namespace, namespace)
	}
	record()
	m.count++
	return nil
}

// isBlankYAML reports whether doc holds only comments and whitespace (helm emits such
// documents for templates whose condition is off).
func isBlankYAML(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

var envReference = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// resolveEnv computes the environment a container sees, the way the kubelet expands
// $(NAME) references: only to variables defined earlier in the list (a later or missing one
// stays literal, a silent bug, so it is an error here). Field references take the values of
// fields; secret and config map references become "<secret name/key>" placeholders.
func resolveEnv(env []corev1.EnvVar, fields map[string]string) (map[string]string, error) {
	resolved := map[string]string{}
	var errs []error
	for _, e := range env {
		if _, dup := resolved[e.Name]; dup {
			errs = append(errs, fmt.Errorf("env %s is set twice (the last one wins silently)", e.Name))
		}
		switch {
		case e.ValueFrom == nil:
			value := envReference.ReplaceAllStringFunc(e.Value, func(ref string) string {
				name := envReference.FindStringSubmatch(ref)[1]
				v, ok := resolved[name]
				if !ok {
					errs = append(errs, fmt.Errorf("env %s refers to %s, which is not defined before it", e.Name, ref))
					return ref
				}
				return v
			})
			resolved[e.Name] = value
		case e.ValueFrom.FieldRef != nil:
			v, ok := fields[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				errs = append(errs, fmt.Errorf("env %s: unexpected field %s", e.Name, e.ValueFrom.FieldRef.FieldPath))
			}
			resolved[e.Name] = v
		case e.ValueFrom.SecretKeyRef != nil:
			resolved[e.Name] = fmt.Sprintf("<secret %s/%s>", e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
		case e.ValueFrom.ConfigMapKeyRef != nil:
			resolved[e.Name] = fmt.Sprintf("<configmap %s/%s>", e.ValueFrom.ConfigMapKeyRef.Name, e.ValueFrom.ConfigMapKeyRef.Key)
		default:
			resolved[e.Name] = "<resource>"
		}
	}
	return resolved, errors.Join(errs...)
}
