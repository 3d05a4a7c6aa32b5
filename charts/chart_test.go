package charts

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kuracache/kura/internal/config"
)

const (
	chartDir         = "kura"
	releaseNamespace = "kura-test"
	// The Kubernetes version the chart is rendered for: that of the k8s.io/api types the
	// manifests are decoded into. A helm built with `go install` defaults to v1.20 (release
	// builds set the version at link time), which would drop the preStop sleep.
	kubeVersion = "1.37.0"
)

// want is what one rendering must contain, written out from its values.
type want struct {
	fullname       string
	replicas       int32
	image          string
	serviceType    corev1.ServiceType
	storageClass   string // "" = the cluster default (no storageClassName)
	storageSize    string
	tenant, region string
	clusterDomain  string
	drainMS        int64
	preStopSleep   int64
	graceExtra     int64
	// extensionConfigMap names the policy ConfigMap ("" = no policy); extensionScript says
	// the chart renders it from an inline script.
	extensionConfigMap string
	extensionScript    bool
	// gossipSecret names the Secret of KURA_GOSSIP_KEY ("" = no key); gossipGenerated says
	// the chart renders it.
	gossipSecret    string
	gossipSecretKey string
	gossipGenerated bool
	peerTLSSecret   string
	// publicTLSSecret names the Secret of KURA_PUBLIC_TLS_* ("" = plain HTTP and gRPC).
	publicTLSSecret string
	ingress         bool
	serviceMonitor  bool
	// userEnv are KURA_* names a values file adds through extraEnv for its policy script:
	// the operator's own, exempt from the known-variable check.
	userEnv []string
}

type chartCase struct {
	name        string
	release     string
	kubeVersion string
	args        []string // -f and --set flags
	want        want
}

func defaultsWant() want {
	return want{
		fullname: "rel-kura", replicas: 3, image: "ghcr.io/kuracache/kura:0.1.0",
		serviceType: corev1.ServiceTypeClusterIP, storageSize: "50Gi",
		tenant: "default", region: "local", clusterDomain: "cluster.local",
		drainMS: 25000, preStopSleep: 5, graceExtra: 10,
	}
}

func chartCases() []chartCase {
	scaleway := defaultsWant()
	scaleway.serviceType, scaleway.storageClass, scaleway.storageSize, scaleway.region = corev1.ServiceTypeLoadBalancer, "scw-bssd", "100Gi", "fr-par"

	oldKubernetes := defaultsWant()
	oldKubernetes.preStopSleep = 0 // no sleep action before 1.30

	existing := defaultsWant()
	existing.fullname, existing.replicas = "kura", 1
	existing.extensionConfigMap = "kura-policy"
	existing.gossipSecret, existing.gossipSecretKey = "kura-gossip", "gossip-key"
	existing.peerTLSSecret = "kura-peer-tls"

	publicTLS := defaultsWant()
	publicTLS.publicTLSSecret, publicTLS.serviceMonitor = "kura-tls", true

	return []chartCase{
		{name: "defaults", release: "rel", want: defaultsWant()},
		{name: "scaleway", release: "rel", args: []string{"-f", chartDir + "/values-scaleway.yaml"}, want: scaleway},
		{name: "kubernetes-1.29", release: "rel", kubeVersion: "1.29.0", want: oldKubernetes},
		{name: "existing-secrets", release: "kura", args: []string{"--set", strings.Join([]string{
			"replicaCount=1",
			"gossipKey.existingSecret=kura-gossip",
			"extension.enabled=true", "extension.existingConfigMap=kura-policy",
			"peerTls.enabled=true", "peerTls.secretName=kura-peer-tls",
		}, ",")}, want: existing},
		{name: "public-tls", release: "rel", args: []string{"--set", "publicTls.enabled=true,publicTls.secretName=kura-tls,serviceMonitor.enabled=true"}, want: publicTLS},
		{name: "all-on", release: "rel", args: []string{"-f", chartDir + "/ci/all-on-values.yaml"}, want: want{
			fullname: "cache", replicas: 5, image: "registry.example.com/kura:1.2.3",
			serviceType: corev1.ServiceTypeLoadBalancer, storageClass: "fast-ssd", storageSize: "500Gi",
			tenant: "acme", region: "eu-west", clusterDomain: "k8s.example",
			drainMS: 60500, preStopSleep: 7, graceExtra: 15,
			extensionConfigMap: "cache-extension", extensionScript: true,
			gossipSecret: "cache-gossip-key", gossipSecretKey: "key", gossipGenerated: true,
			peerTLSSecret: "cache-peer-tls", publicTLSSecret: "cache-public-tls", ingress: true, serviceMonitor: true,
			userEnv: []string{"KURA_POLICY_TOKENS"},
		}},
	}
}

func (c chartCase) helmArgs(command string) []string {
	kv := c.kubeVersion
	if kv == "" {
		kv = kubeVersion
	}
	args := []string{command}
	if command == "template" {
		args = append(args, c.release)
	}
	args = append(args, chartDir, "--namespace", releaseNamespace, "--kube-version", kv)
	if command == "lint" {
		args = append(args, "--strict")
	}
	return append(args, c.args...)
}

// TestChartLintsAndRendersValidManifests lints and renders the chart for the defaults, each
// values file and each optional feature, decodes every manifest strictly into the Kubernetes
// API types and checks what a Kura cluster depends on.
func TestChartLintsAndRendersValidManifests(t *testing.T) {
	helmPath := helmBinary(t)
	known := kuraVariables(t)
	for _, c := range chartCases() {
		t.Run(c.name, func(t *testing.T) {
			if out, err := helm(helmPath, c.helmArgs("lint")...); err != nil {
				t.Fatalf("lint: %v", err)
			} else if strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
				t.Fatalf("lint findings:\n%s", out)
			}
			rendered, err := helm(helmPath, c.helmArgs("template")...)
			if err != nil {
				t.Fatal(err)
			}
			m, err := decodeManifests(rendered, releaseNamespace)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d manifests decoded strictly", m.count)
			env := checkRendering(t, c.want, m, known)
			if c.name == "defaults" {
				checkDefaultsMatchKura(t, env, known)
			}
		})
	}
}

// TestChartRejectsIncompleteValues checks that values which would start broken pods fail at
// render time, with a message naming what to set.
func TestChartRejectsIncompleteValues(t *testing.T) {
	helmPath := helmBinary(t)
	for _, tc := range []struct{ set, message string }{
		{"extension.enabled=true", "extension.enabled needs extension.script"},
		{"extension.enabled=true,extension.script=x,extension.existingConfigMap=y", "not both"},
		{"gossipKey.existingSecret=k,gossipKey.generate=true", "not both"},
		{"peerTls.enabled=true", "peerTls.enabled needs peerTls.secretName"},
		{"publicTls.enabled=true", "publicTls.enabled needs publicTls.secretName"},
		{"config.drainTimeoutMs=0", "config.drainTimeoutMs must be a positive"},
		{"podAntiAffinity=sometimes", "podAntiAffinity must be soft, hard or none"},
	} {
		t.Run(tc.set, func(t *testing.T) {
			c := chartCase{release: "rel", args: []string{"--set", tc.set}}
			_, err := helm(helmPath, c.helmArgs("template")...)
			if err == nil || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("helm template --set %s: got %v, want an error containing %q", tc.set, err, tc.message)
			}
		})
	}
}

// checkRendering checks one rendering and returns the environment of its first pod.
func checkRendering(t *testing.T, w want, m *manifests, known *knownVariables) map[string]string {
	t.Helper()
	if len(m.statefulSets) != 1 {
		t.Fatalf("%d StatefulSets, want 1", len(m.statefulSets))
	}
	sts := m.statefulSets[0]
	if sts.Name != w.fullname {
		t.Errorf("StatefulSet %q, want %q", sts.Name, w.fullname)
	}
	// Its controller-revision-hash label is <name>-<10 characters>, at most 63.
	if len(sts.Name) > 52 {
		t.Errorf("StatefulSet name %q is longer than 52 characters", sts.Name)
	}
	spec := sts.Spec
	pod := spec.Template.Spec
	podLabels := labels.Set(spec.Template.Labels)
	if spec.Replicas == nil || *spec.Replicas != w.replicas {
		t.Errorf("replicas %v, want %d", spec.Replicas, w.replicas)
	}
	if spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("podManagementPolicy %q, want Parallel", spec.PodManagementPolicy)
	}
	if spec.UpdateStrategy.Type != appsv1.RollingUpdateStatefulSetStrategyType {
		t.Errorf("updateStrategy %q, want RollingUpdate", spec.UpdateStrategy.Type)
	}
	if sel, err := metav1.LabelSelectorAsSelector(spec.Selector); err != nil || !sel.Matches(podLabels) {
		t.Errorf("selector %v does not match the pod labels %v (%v)", spec.Selector, podLabels, err)
	}

	if len(pod.Containers) != 1 || pod.Containers[0].Name != "kura" {
		t.Fatalf("containers %v, want the one container kura", pod.Containers)
	}
	ctr := pod.Containers[0]
	if ctr.Image != w.image {
		t.Errorf("image %q, want %q", ctr.Image, w.image)
	}
	ports := checkContainerPorts(t, ctr)

	// The services: the headless one behind pod DNS and discovery, the regular one for clients.
	headless := m.services[spec.ServiceName]
	if headless == nil {
		t.Fatalf("serviceName %q names no rendered Service (have %v)", spec.ServiceName, keys(m.services))
	}
	if headless.Spec.ClusterIP != corev1.ClusterIPNone || !headless.Spec.PublishNotReadyAddresses {
		t.Errorf("service %s: clusterIP %q publishNotReadyAddresses %v, want a headless service publishing not-ready pods", headless.Name, headless.Spec.ClusterIP, headless.Spec.PublishNotReadyAddresses)
	}
	regular := m.services[w.fullname]
	if regular == nil {
		t.Fatalf("no Service %q", w.fullname)
	}
	if regular.Spec.Type != w.serviceType || regular.Spec.ClusterIP == corev1.ClusterIPNone {
		t.Errorf("service %s: type %q clusterIP %q, want type %q with a cluster IP", regular.Name, regular.Spec.Type, regular.Spec.ClusterIP, w.serviceType)
	}
	for _, svc := range m.services {
		checkServiceTargetsPod(t, svc, podLabels, ports)
	}
	if len(m.services) != 2 {
		t.Errorf("services %v, want the headless and the regular one", keys(m.services))
	}
	requireServicePorts(t, regular, "http", "grpc")
	requireServicePorts(t, headless, "http", "grpc", "gossip-tcp", "gossip-udp", "internal")

	// The environment, as the first pod sees it.
	pod0 := sts.Name + "-0"
	env, err := resolveEnv(ctr.Env, map[string]string{"metadata.name": pod0, "metadata.namespace": releaseNamespace})
	if err != nil {
		t.Error(err)
	}
	for _, e := range ctr.Env {
		if errs := validation.IsEnvVarName(e.Name); len(errs) > 0 {
			t.Errorf("env name %q: %v", e.Name, errs)
		}
		if strings.HasPrefix(e.Name, "KURA_") && !slices.Contains(w.userEnv, e.Name) && !known.has(e.Name) {
			t.Errorf("env %s is not a variable kura reads (kura --help lists them)", e.Name)
		}
	}
	wantEnv := map[string]string{
		config.EnvNodeName:         pod0,
		config.EnvNodeURL:          fmt.Sprintf("%s://%s.%s.%s.svc.%s:%d", w.scheme(), pod0, headless.Name, releaseNamespace, w.clusterDomain, ports["http"].ContainerPort),
		config.EnvDiscoveryDNSName: fmt.Sprintf("%s.%s.svc.%s", headless.Name, releaseNamespace, w.clusterDomain),
		config.EnvBindAddress:      "0.0.0.0",
		config.EnvDataDir:          "/data",
		config.EnvTenantID:         w.tenant,
		config.EnvRegion:           w.region,
		config.EnvPort:             portString(ports["http"]),
		config.EnvGRPCPort:         portString(ports["grpc"]),
		config.EnvGossipPort:       portString(ports["gossip-tcp"]),
		config.EnvInternalPort:     portString(ports["internal"]),
		config.EnvDrainTimeoutMS:   strconv.FormatInt(w.drainMS, 10),
	}
	for name, v := range wantEnv {
		if got, ok := env[name]; !ok || got != v {
			t.Errorf("env %s = %q (set: %v), want %q", name, got, ok, v)
		}
	}
	if ports["gossip-udp"].ContainerPort != ports["gossip-tcp"].ContainerPort || ports["gossip-udp"].Protocol != corev1.ProtocolUDP {
		t.Errorf("gossip ports %v / %v, want TCP and UDP on one port", ports["gossip-tcp"], ports["gossip-udp"])
	}

	checkProbesAndDrain(t, w, pod, ctr, ports)
	checkStorage(t, w, sts, ctr)
	checkSecurity(t, pod, ctr, m)
	checkExtension(t, w, m, pod, ctr, env, spec.Template.Annotations)
	checkGossipKey(t, w, m, env)
	checkPeerTLS(t, w, pod, ctr, env)
	checkPublicTLS(t, w, pod, ctr, env)

	if mem := ctr.Resources.Limits.Memory(); mem.IsZero() {
		t.Error("no memory limit: Kura would size its watermarks from the node's memory")
	}

	if len(m.pdbs) != 1 {
		t.Errorf("%d PodDisruptionBudgets, want 1", len(m.pdbs))
	} else if sel, err := metav1.LabelSelectorAsSelector(m.pdbs[0].Spec.Selector); err != nil || !sel.Matches(podLabels) || m.pdbs[0].Spec.MaxUnavailable == nil {
		t.Errorf("PodDisruptionBudget %v does not cover the pods (%v)", m.pdbs[0].Spec, err)
	}

	if got := len(m.ingresses); got != map[bool]int{true: 1}[w.ingress] {
		t.Errorf("%d Ingresses, want ingress=%v", got, w.ingress)
	}
	for _, ing := range m.ingresses {
		for _, rule := range ing.Spec.Rules {
			for _, p := range rule.HTTP.Paths {
				if b := p.Backend.Service; b == nil || b.Name != regular.Name || b.Port.Name != "http" {
					t.Errorf("ingress path %s: backend %v, want port http of service %s", p.Path, p.Backend, regular.Name)
				}
			}
		}
	}
	checkServiceMonitor(t, w, m, headless, regular)
	return env
}

// checkDefaultsMatchKura: where the chart sets a variable by default, it sets kura's own
// default, so the chart's defaults and `kura --help` tell the same story.
func checkDefaultsMatchKura(t *testing.T, env map[string]string, known *knownVariables) {
	t.Helper()
	for _, name := range []string{
		config.EnvBindAddress, config.EnvPort, config.EnvGRPCPort, config.EnvGossipPort, config.EnvInternalPort,
		config.EnvTenantID, config.EnvRegion, config.EnvDrainTimeoutMS, config.EnvLogLevel, config.EnvLogFormat,
	} {
		if env[name] != known.defaults[name] {
			t.Errorf("the chart's default %s=%q, kura's default is %q", name, env[name], known.defaults[name])
		}
	}
}

func portString(p corev1.ContainerPort) string { return strconv.Itoa(int(p.ContainerPort)) }

func checkContainerPorts(t *testing.T, ctr corev1.Container) map[string]corev1.ContainerPort {
	t.Helper()
	ports := map[string]corev1.ContainerPort{}
	for _, p := range ctr.Ports {
		if errs := validation.IsValidPortName(p.Name); len(errs) > 0 {
			t.Errorf("container port name %q: %v", p.Name, errs)
		}
		if errs := validation.IsValidPortNum(int(p.ContainerPort)); len(errs) > 0 {
			t.Errorf("container port %s: %v", p.Name, errs)
		}
		if _, dup := ports[p.Name]; dup {
			t.Errorf("container port name %q used twice", p.Name)
		}
		ports[p.Name] = p
	}
	for _, name := range []string{"http", "grpc", "gossip-tcp", "gossip-udp", "internal"} {
		if _, ok := ports[name]; !ok {
			t.Errorf("no container port %q", name)
		}
	}
	return ports
}

// checkServiceTargetsPod checks that a service selects the pods and that each of its ports
// targets a named container port of the same protocol.
func checkServiceTargetsPod(t *testing.T, svc *corev1.Service, podLabels labels.Set, ports map[string]corev1.ContainerPort) {
	t.Helper()
	if len(svc.Spec.Selector) == 0 || !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
		t.Errorf("service %s: selector %v does not select the pods %v", svc.Name, svc.Spec.Selector, podLabels)
	}
	for _, sp := range svc.Spec.Ports {
		cp, ok := ports[sp.TargetPort.StrVal]
		if !ok {
			t.Errorf("service %s port %s: targetPort %q is no container port", svc.Name, sp.Name, sp.TargetPort.String())
			continue
		}
		if cp.Protocol != sp.Protocol {
			t.Errorf("service %s port %s: protocol %s, container port %s", svc.Name, sp.Name, sp.Protocol, cp.Protocol)
		}
	}
}

func requireServicePorts(t *testing.T, svc *corev1.Service, names ...string) {
	t.Helper()
	for _, name := range names {
		if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == name }) {
			t.Errorf("service %s has no port %q", svc.Name, name)
		}
	}
}

// checkProbesAndDrain: readiness on /ready (503 while joining or draining), liveness and
// startup on /up, all on the HTTP port; the grace period outlasts preStop sleep plus drain.
func checkProbesAndDrain(t *testing.T, w want, pod corev1.PodSpec, ctr corev1.Container, ports map[string]corev1.ContainerPort) {
	t.Helper()
	for _, p := range []struct {
		kind  string
		probe *corev1.Probe
		path  string
	}{{"readiness", ctr.ReadinessProbe, "/ready"}, {"liveness", ctr.LivenessProbe, "/up"}, {"startup", ctr.StartupProbe, "/up"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe %v, want GET %s", p.kind, p.probe, p.path)
			continue
		}
		get := p.probe.HTTPGet
		if get.Path != p.path || get.Port.StrVal != "http" || ports["http"].ContainerPort == 0 {
			t.Errorf("%s probe GET %s on port %s, want GET %s on the http port", p.kind, get.Path, get.Port.String(), p.path)
		}
		if want := corev1.URIScheme(strings.ToUpper(w.scheme())); get.Scheme != want {
			t.Errorf("%s probe scheme %q, want %q", p.kind, get.Scheme, want)
		}
	}

	var sleep int64
	if ctr.Lifecycle != nil && ctr.Lifecycle.PreStop != nil {
		if ctr.Lifecycle.PreStop.Sleep == nil {
			t.Errorf("preStop %v, want only a sleep (the image has no shell)", ctr.Lifecycle.PreStop)
		} else {
			sleep = ctr.Lifecycle.PreStop.Sleep.Seconds
		}
	}
	if sleep != w.preStopSleep {
		t.Errorf("preStop sleep %ds, want %ds", sleep, w.preStopSleep)
	}
	drainSeconds := (w.drainMS + 999) / 1000
	grace := pod.TerminationGracePeriodSeconds
	if grace == nil || *grace <= sleep+drainSeconds || *grace != sleep+drainSeconds+w.graceExtra {
		t.Errorf("terminationGracePeriodSeconds %v, want preStop %d + drain %d + %d (above the drain deadline)", grace, sleep, drainSeconds, w.graceExtra)
	}
}

// checkStorage: one claim per pod from the template, mounted at /data, and nothing else called
// data that would shadow it.
func checkStorage(t *testing.T, w want, sts *appsv1.StatefulSet, ctr corev1.Container) {
	t.Helper()
	claims := sts.Spec.VolumeClaimTemplates
	if len(claims) != 1 || claims[0].Name != "data" {
		t.Fatalf("volumeClaimTemplates %v, want one named data", claims)
	}
	claim := claims[0].Spec
	if size := claim.Resources.Requests[corev1.ResourceStorage]; size.Cmp(resource.MustParse(w.storageSize)) != 0 {
		t.Errorf("claim size %s, want %s", size.String(), w.storageSize)
	}
	if len(claim.AccessModes) == 0 {
		t.Error("claim has no access modes")
	}
	switch {
	case w.storageClass == "" && claim.StorageClassName != nil:
		t.Errorf("storageClassName %q, want none (the cluster default)", *claim.StorageClassName)
	case w.storageClass != "" && (claim.StorageClassName == nil || *claim.StorageClassName != w.storageClass):
		t.Errorf("storageClassName %v, want %q", claim.StorageClassName, w.storageClass)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range sts.Spec.Template.Spec.Volumes {
		volumes[v.Name] = v
	}
	if _, shadow := volumes["data"]; shadow {
		t.Error("a pod volume named data shadows the claim template")
	}
	mounted := false
	for _, vm := range ctr.VolumeMounts {
		if _, ok := volumes[vm.Name]; !ok && vm.Name != "data" {
			t.Errorf("volumeMount %s names no volume", vm.Name)
		}
		if vm.Name == "data" && vm.MountPath == "/data" && !vm.ReadOnly {
			mounted = true
		}
	}
	if !mounted {
		t.Error("the data claim is not mounted writable at /data")
	}
}

func checkSecurity(t *testing.T, pod corev1.PodSpec, ctr corev1.Container, m *manifests) {
	t.Helper()
	psc, csc := pod.SecurityContext, ctr.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 || psc.FSGroup == nil {
		t.Errorf("pod securityContext %v, want non-root with an fsGroup for the volume", psc)
	}
	if csc == nil || csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem || csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
		t.Errorf("container securityContext %v, want a read-only root and no privilege escalation", csc)
	}
	tmp := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == "tmp" && v.EmptyDir != nil })
	if tmp < 0 || !slices.ContainsFunc(ctr.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.Name == "tmp" && vm.MountPath == "/tmp" }) {
		t.Error("no writable emptyDir at /tmp")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the service account token is mounted; Kura never calls the API")
	}
	if _, ok := m.serviceAccounts[pod.ServiceAccountName]; !ok {
		t.Errorf("serviceAccountName %q is not rendered", pod.ServiceAccountName)
	}
}

const (
	extensionDir    = "/etc/kura/extensions"
	extensionScript = extensionDir + "/policy.lua"
	peerTLSDir      = "/etc/kura/peer-tls"
	publicTLSDir    = "/etc/kura/public-tls"
)

func checkExtension(t *testing.T, w want, m *manifests, pod corev1.PodSpec, ctr corev1.Container, env map[string]string, annotations map[string]string) {
	t.Helper()
	path, set := env[config.EnvExtensionScriptPath]
	if w.extensionConfigMap == "" {
		if set || len(m.configMaps) > 0 {
			t.Errorf("no policy asked for, but %s=%q and config maps %v", config.EnvExtensionScriptPath, path, keys(m.configMaps))
		}
		return
	}
	if path != extensionScript {
		t.Errorf("%s = %q, want %s", config.EnvExtensionScriptPath, path, extensionScript)
	}
	vol := mountedVolume(t, pod, ctr, extensionDir)
	if vol == nil || vol.ConfigMap == nil || vol.ConfigMap.Name != w.extensionConfigMap ||
		!slices.Contains(vol.ConfigMap.Items, corev1.KeyToPath{Key: "policy.lua", Path: "policy.lua"}) {
		t.Errorf("%s: volume %v, want policy.lua of config map %s", extensionDir, vol, w.extensionConfigMap)
	}
	cm := m.configMaps[w.extensionConfigMap]
	if !w.extensionScript {
		if cm != nil {
			t.Errorf("config map %s is rendered, but it was given as existing", w.extensionConfigMap)
		}
		return
	}
	if cm == nil || !strings.Contains(cm.Data["policy.lua"], "function authenticate(ctx)") {
		t.Fatalf("config map %s: %v, want the inline script under policy.lua", w.extensionConfigMap, cm)
	}
	for key := range cm.Data {
		if errs := validation.IsConfigMapKey(key); len(errs) > 0 {
			t.Errorf("config map key %q: %v", key, errs)
		}
	}
	if annotations["checksum/extension"] == "" {
		t.Error("no checksum/extension pod annotation: a new script would not roll the pods")
	}
}

func checkGossipKey(t *testing.T, w want, m *manifests, env map[string]string) {
	t.Helper()
	got, set := env[config.EnvGossipKey]
	if w.gossipSecret == "" {
		if set || len(m.secrets) > 0 {
			t.Errorf("no gossip key asked for, but %s=%q and secrets %v", config.EnvGossipKey, got, keys(m.secrets))
		}
		return
	}
	if ref := fmt.Sprintf("<secret %s/%s>", w.gossipSecret, w.gossipSecretKey); got != ref {
		t.Errorf("%s from %q, want %s", config.EnvGossipKey, got, ref)
	}
	secret := m.secrets[w.gossipSecret]
	if !w.gossipGenerated {
		if secret != nil {
			t.Errorf("secret %s is rendered, but it was given as existing", w.gossipSecret)
		}
		return
	}
	if secret == nil {
		t.Fatalf("secret %s is not rendered (have %v)", w.gossipSecret, keys(m.secrets))
	}
	// Secret data arrives base64-decoded: what remains is KURA_GOSSIP_KEY, itself base64.
	key, err := base64.StdEncoding.DecodeString(string(secret.Data[w.gossipSecretKey]))
	if err != nil || (len(key) != 16 && len(key) != 24 && len(key) != 32) {
		t.Errorf("generated gossip key %q decodes to %d bytes (%v), want a 16, 24 or 32-byte AES key", secret.Data[w.gossipSecretKey], len(key), err)
	}
	if secret.Annotations["helm.sh/resource-policy"] != "keep" {
		t.Error("the generated gossip key secret is deleted with the release")
	}
}

func checkPeerTLS(t *testing.T, w want, pod corev1.PodSpec, ctr corev1.Container, env map[string]string) {
	t.Helper()
	checkSecretFiles(t, "peer TLS", w.peerTLSSecret, peerTLSDir, pod, ctr, env,
		config.EnvInternalTLSCACert, config.EnvInternalTLSCert, config.EnvInternalTLSKey)
}

// checkPublicTLS: with a public TLS Secret, its certificate and key are mounted read-only and
// named by KURA_PUBLIC_TLS_*; without one, none of those is set.
func checkPublicTLS(t *testing.T, w want, pod corev1.PodSpec, ctr corev1.Container, env map[string]string) {
	t.Helper()
	if v, set := env[config.EnvPublicTLSClientCA]; set {
		t.Errorf("%s=%q: client certificates would fail kubelet's probes", config.EnvPublicTLSClientCA, v)
	}
	checkSecretFiles(t, "public TLS", w.publicTLSSecret, publicTLSDir, pod, ctr, env,
		config.EnvPublicTLSCert, config.EnvPublicTLSKey)
}

// checkSecretFiles: with secret set, it is mounted read-only at dir and each of names is a
// file in it; with secret empty, none of names is set.
func checkSecretFiles(t *testing.T, what, secret, dir string, pod corev1.PodSpec, ctr corev1.Container, env map[string]string, names ...string) {
	t.Helper()
	if secret == "" {
		for _, name := range names {
			if v, set := env[name]; set {
				t.Errorf("%s is off, but %s=%q", what, name, v)
			}
		}
		return
	}
	for _, name := range names {
		if !strings.HasPrefix(env[name], dir+"/") {
			t.Errorf("%s = %q, want a file in %s", name, env[name], dir)
		}
	}
	vol := mountedVolume(t, pod, ctr, dir)
	if vol == nil || vol.Secret == nil || vol.Secret.SecretName != secret {
		t.Errorf("%s: volume %v, want secret %s", dir, vol, secret)
	}
}

// scheme is how clients, probes and Prometheus reach the pods' HTTP port.
func (w want) scheme() string {
	if w.publicTLSSecret != "" {
		return "https"
	}
	return "http"
}

// mountedVolume returns the pod volume the container mounts read-only at path.
func mountedVolume(t *testing.T, pod corev1.PodSpec, ctr corev1.Container, path string) *corev1.Volume {
	t.Helper()
	i := slices.IndexFunc(ctr.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.MountPath == path })
	if i < 0 {
		t.Errorf("nothing is mounted at %s", path)
		return nil
	}
	if !ctr.VolumeMounts[i].ReadOnly {
		t.Errorf("%s is mounted writable", path)
	}
	for _, v := range pod.Volumes {
		if v.Name == ctr.VolumeMounts[i].Name {
			return &v
		}
	}
	return nil
}

// A Prometheus duration, as the ServiceMonitor CRD's pattern has it.
var promDuration = regexp.MustCompile(`^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$`)

func checkServiceMonitor(t *testing.T, w want, m *manifests, headless, regular *corev1.Service) {
	t.Helper()
	if got := len(m.serviceMonitors); got != map[bool]int{true: 1}[w.serviceMonitor] {
		t.Fatalf("%d ServiceMonitors, want serviceMonitor=%v", got, w.serviceMonitor)
	}
	if !w.serviceMonitor {
		return
	}
	sm := m.serviceMonitors[0]
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(headless.Labels)) || sel.Matches(labels.Set(regular.Labels)) {
		t.Errorf("ServiceMonitor selector %v, want the headless service only (every pod once, ready or not) (%v)", sm.Spec.Selector, err)
	}
	if !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{releaseNamespace}) {
		t.Errorf("ServiceMonitor namespaces %v, want [%s]", sm.Spec.NamespaceSelector.MatchNames, releaseNamespace)
	}
	if len(sm.Spec.Endpoints) != 1 {
		t.Fatalf("ServiceMonitor endpoints %v, want one", sm.Spec.Endpoints)
	}
	ep := sm.Spec.Endpoints[0]
	requireServicePorts(t, headless, ep.Port)
	if ep.Port != "http" || ep.Path != "/metrics" || !promDuration.MatchString(ep.Interval) || !promDuration.MatchString(ep.ScrapeTimeout) {
		t.Errorf("ServiceMonitor endpoint %+v, want /metrics on port http every valid interval", ep)
	}
	if ep.Scheme != w.scheme() {
		t.Errorf("ServiceMonitor scheme %q, want %q", ep.Scheme, w.scheme())
	}
}

// knownVariables are the names `kura --help` documents (config.Usage): literal names, and the
// extension families as patterns (<ID> stands for any id).
type knownVariables struct {
	literal  map[string]bool
	defaults map[string]string // as --help shows them
	families []*regexp.Regexp
}

func kuraVariables(t *testing.T) *knownVariables {
	t.Helper()
	k := &knownVariables{literal: map[string]bool{}, defaults: map[string]string{}}
	for _, line := range strings.Split(config.Usage(), "\n") {
		// "  KURA_NAME = default"; meaning lines are indented further.
		if !strings.HasPrefix(line, "  KURA_") {
			continue
		}
		name, def, ok := strings.Cut(strings.TrimSpace(line), " = ")
		if !ok {
			continue
		}
		if strings.Contains(name, "<ID>") {
			parts := strings.Split(name, "<ID>")
			for i := range parts {
				parts[i] = regexp.QuoteMeta(parts[i])
			}
			k.families = append(k.families, regexp.MustCompile("^"+strings.Join(parts, "[A-Za-z0-9_]+")+"$"))
			continue
		}
		k.literal[name] = true
		k.defaults[name] = def
	}
	if !k.literal[config.EnvPort] || !k.literal[config.EnvDiscoveryDNSName] || len(k.families) == 0 {
		t.Fatalf("could not read the variables from config.Usage() (found %d names, %d families): has its format changed?", len(k.literal), len(k.families))
	}
	return k
}

func (k *knownVariables) has(name string) bool {
	if k.literal[name] {
		return true
	}
	for _, f := range k.families {
		if f.MatchString(name) {
			return true
		}
	}
	return false
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
