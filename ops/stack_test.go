package ops

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/distribution/reference"
	"github.com/prometheus/common/model"
	promconfig "github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"go.yaml.in/yaml/v3"

	"github.com/kuracache/kura/internal/config"
)

// stackNode is what docker-compose.yml must say about one Kura node.
type stackNode struct {
	service, region  string
	http, grpc       string // published host ports
	volume           string // the named volume holding KURA_DATA_DIR
	peersOfTheOthers []string
}

var stackNodes = []stackNode{
	{"kura-us", "us", "4101", "5101", "kura-us-data", []string{"kura-eu:7946", "kura-ap:7946"}},
	{"kura-eu", "eu", "4102", "5102", "kura-eu-data", []string{"kura-us:7946", "kura-ap:7946"}},
	{"kura-ap", "ap", "4103", "5103", "kura-ap-data", []string{"kura-us:7946", "kura-eu:7946"}},
}

// The published ports of the rest of the stack: host port → container port.
var stackPorts = map[string]map[string]uint32{
	"prometheus": {"9090": 9090},
	"grafana":    {"3000": 3000},
	"loki":       {"3100": 3100},
	"tempo":      {"3200": 3200, "4318": 4318},
	"promtail":   {},
}

// loadStack loads docker-compose.yml the way docker compose does (compose-spec loader: schema
// validation, interpolation, extension merging, path resolution), with an empty environment
// so the file's own defaults are what is checked.
func loadStack(t *testing.T) *types.Project {
	t.Helper()
	root := repoRoot(t)
	opts, err := cli.NewProjectOptions(
		[]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root),
		cli.WithEnv(nil),
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	project, err := opts.LoadProject(ctx)
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return project
}

// env returns a service's environment with unset (nil) values as "".
func env(s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			out[k] = *v
		} else {
			out[k] = ""
		}
	}
	return out
}

// published maps a service's published host ports to their container port and protocol.
func published(s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for _, p := range s.Ports {
		out[p.Published] = fmt.Sprintf("%d/%s", p.Target, p.Protocol)
	}
	return out
}

// mountAt returns the service's volume mounted at target.
func mountAt(s types.ServiceConfig, target string) (types.ServiceVolumeConfig, bool) {
	for _, v := range s.Volumes {
		if v.Target == target {
			return v, true
		}
	}
	return types.ServiceVolumeConfig{}, false
}

func TestComposeStackNodes(t *testing.T) {
	project := loadStack(t)
	if project.Name != "kura" {
		t.Errorf("project name %q, want kura (fixed, so volume and container names do not depend on the checkout's directory)", project.Name)
	}
	want := []string{"grafana", "kura-ap", "kura-eu", "kura-us", "loki", "prometheus", "promtail", "tempo"}
	if got := slices.Sorted(maps.Keys(project.Services)); !slices.Equal(got, want) {
		t.Fatalf("services %v, want %v", got, want)
	}

	var gossipKey string
	for _, n := range stackNodes {
		s := project.Services[n.service]
		e := env(s)
		if s.Build == nil || s.Build.Context != repoRoot(t) || filepath.Base(s.Build.Dockerfile) != "Dockerfile" {
			t.Errorf("%s: build %+v, want the repository root's Dockerfile", n.service, s.Build)
		}
		wantPorts := map[string]string{n.http: "4000/tcp", n.grpc: "50051/tcp"}
		if got := published(s); !maps.Equal(got, wantPorts) {
			t.Errorf("%s: ports %v, want %v", n.service, got, wantPorts)
		}
		for k, v := range map[string]string{
			"KURA_REGION":    n.region,
			"KURA_NODE_NAME": n.service,
			"KURA_NODE_URL":  "http://" + n.service + ":4000",
			"KURA_DATA_DIR":  "/data",
			"KURA_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4318/v1/traces",
		} {
			if e[k] != v {
				t.Errorf("%s: %s=%q, want %q", n.service, k, e[k], v)
			}
		}
		if got := strings.Split(e["KURA_PEERS"], ","); !slices.Equal(got, n.peersOfTheOthers) {
			t.Errorf("%s: KURA_PEERS=%q, want the other nodes' gossip ports %v", n.service, e["KURA_PEERS"], n.peersOfTheOthers)
		}
		if gossipKey == "" {
			gossipKey = e["KURA_GOSSIP_KEY"]
		} else if e["KURA_GOSSIP_KEY"] != gossipKey {
			t.Errorf("%s: KURA_GOSSIP_KEY differs from kura-us's: the nodes would never join", n.service)
		}

		// Kura itself accepts the environment: every variable known, every value valid.
		environ := []string{"KURA_DATA_DIR=" + t.TempDir()}
		for k, v := range e {
			if k != "KURA_DATA_DIR" {
				environ = append(environ, k+"="+v)
			}
		}
		cfg, err := config.Load(environ)
		if err != nil {
			t.Errorf("%s: kura rejects its environment: %v", n.service, err)
			continue
		}
		if len(cfg.Warnings) > 0 {
			t.Errorf("%s: kura warns about its environment: %q", n.service, cfg.Warnings)
		}
		if cfg.Port != 4000 || cfg.GRPCPort != 50051 || cfg.GossipPort != 7946 {
			t.Errorf("%s: ports %d/%d/%d, want the image's 4000/50051/7946", n.service, cfg.Port, cfg.GRPCPort, cfg.GossipPort)
		}

		data, ok := mountAt(s, "/data")
		if !ok || data.Type != types.VolumeTypeVolume || data.Source != n.volume {
			t.Errorf("%s: /data is %+v, want the named volume %s", n.service, data, n.volume)
		}
		if _, ok := project.Volumes[n.volume]; !ok {
			t.Errorf("volume %s is not declared", n.volume)
		}

		hc := s.HealthCheck
		if hc == nil || !slices.Equal([]string(hc.Test), []string{"CMD", "/kura", "healthcheck"}) || hc.Interval == nil || hc.Timeout == nil {
			t.Errorf("%s: healthcheck %+v, want CMD /kura healthcheck with an interval and a timeout", n.service, hc)
		}
		// Docker's default 10 s would SIGKILL a node in the middle of its drain.
		if s.StopGracePeriod == nil || time.Duration(*s.StopGracePeriod) <= cfg.DrainTimeout {
			t.Errorf("%s: stop_grace_period %v, want more than the node's %v drain (KURA_DRAIN_TIMEOUT_MS)", n.service, s.StopGracePeriod, cfg.DrainTimeout)
		}
		// Promtail selects the nodes' containers by these labels.
		if s.Labels["io.kuracache.logs"] != "json" || s.Labels["io.kuracache.region"] != n.region {
			t.Errorf("%s: labels %v, want io.kuracache.logs=json and io.kuracache.region=%s", n.service, s.Labels, n.region)
		}
	}
	if key, err := base64.StdEncoding.DecodeString(gossipKey); err != nil || (len(key) != 16 && len(key) != 24 && len(key) != 32) {
		t.Errorf("KURA_GOSSIP_KEY %q is not base64 of 16, 24 or 32 bytes (%v)", gossipKey, err)
	}
}

func TestComposeStackObservability(t *testing.T) {
	project := loadStack(t)
	root := repoRoot(t)
	for name, wantPorts := range stackPorts {
		s := project.Services[name]
		got := map[string]string{}
		for pub, target := range published(s) {
			got[pub] = target
		}
		want := map[string]string{}
		for pub, target := range wantPorts {
			want[pub] = fmt.Sprintf("%d/tcp", target)
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s: ports %v, want %v", name, got, want)
		}

		// Pinned: a tag that is not latest.
		ref, err := reference.ParseNormalizedNamed(s.Image)
		if err != nil {
			t.Errorf("%s: image %q: %v", name, s.Image, err)
		} else if tagged, ok := ref.(reference.Tagged); !ok || tagged.Tag() == "latest" {
			t.Errorf("%s: image %q is not pinned to a version", name, s.Image)
		}

		// Every config file a service is told to read is mounted, from a file in ops/.
		for _, arg := range s.Command {
			if _, file, ok := strings.Cut(arg, "config.file="); ok {
				m, mounted := mountAt(s, file)
				if !mounted || m.Type != types.VolumeTypeBind || !m.ReadOnly {
					t.Errorf("%s: reads %s, which is not a read-only bind mount", name, file)
				} else if rel, err := filepath.Rel(root, m.Source); err != nil || !strings.HasPrefix(rel, "ops"+string(filepath.Separator)) {
					t.Errorf("%s: %s comes from %s, outside ops/", name, file, m.Source)
				}
			}
		}
		// Every bind-mounted source of the repository exists.
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind && strings.HasPrefix(v.Source, root) {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s: bind mount source %v", name, err)
				}
			}
		}
	}
	for _, name := range []string{"prometheus", "grafana"} {
		if hc := project.Services[name].HealthCheck; hc == nil || len(hc.Test) == 0 {
			t.Errorf("%s has no healthcheck", name)
		}
	}

	grafana := project.Services["grafana"]
	e := env(grafana)
	if e["GF_SECURITY_ADMIN_USER"] != "admin" || e["GF_SECURITY_ADMIN_PASSWORD"] != "admin" {
		t.Errorf("Grafana login is %q/%q, want admin/admin", e["GF_SECURITY_ADMIN_USER"], e["GF_SECURITY_ADMIN_PASSWORD"])
	}
	for _, dir := range []string{"datasources", "dashboards"} {
		m, ok := mountAt(grafana, "/etc/grafana/provisioning/"+dir)
		if !ok || m.Source != filepath.Join(root, "ops", "grafana", "provisioning", dir) {
			t.Errorf("Grafana's provisioning/%s is not ops/grafana/provisioning/%s: %+v", dir, dir, m)
		}
	}

	// The dashboard provider reads the directory the dashboards are mounted at.
	var providers struct {
		Providers []struct {
			Type    string
			Options struct{ Path string }
		}
	}
	decodeYAML(t, "ops/grafana/provisioning/dashboards/dashboards.yaml", &providers)
	if len(providers.Providers) != 1 || providers.Providers[0].Type != "file" {
		t.Fatalf("dashboard providers %+v, want one file provider", providers.Providers)
	}
	path := providers.Providers[0].Options.Path
	m, ok := mountAt(grafana, path)
	if !ok || m.Source != filepath.Join(root, "ops", "grafana", "dashboards") {
		t.Errorf("the provider reads %s, where ops/grafana/dashboards is not mounted (%+v)", path, m)
	}
	if home := e["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]; home != path+"/kura-cluster.json" {
		t.Errorf("home dashboard %q, want %s/kura-cluster.json", home, path)
	}

	// The datasources point at the stack's services, on the ports those listen on.
	for _, ds := range provisionedDatasources(t) {
		u, err := url.Parse(ds.URL)
		if err != nil {
			t.Errorf("datasource %s: %v", ds.Name, err)
			continue
		}
		if _, ok := project.Services[u.Hostname()]; !ok {
			t.Errorf("datasource %s points at %s, not a service of the stack", ds.Name, u.Host)
		}
		want := map[string]string{"prometheus": "prometheus:9090", "loki": "loki:3100", "tempo": "tempo:3200"}[ds.Type]
		if u.Host != want {
			t.Errorf("datasource %s (%s) at %s, want %s", ds.Name, ds.Type, u.Host, want)
		}
	}

	// Promtail talks to the Docker API, and pushes to Loki.
	if m, ok := mountAt(project.Services["promtail"], "/var/run/docker.sock"); !ok || !m.ReadOnly {
		t.Errorf("promtail has no read-only docker.sock: %+v", m)
	}
}

// datasource is one provisioned Grafana datasource.
type datasource struct {
	Name, UID, Type, URL string
	IsDefault            bool `yaml:"isDefault"`
}

func provisionedDatasources(t *testing.T) []datasource {
	t.Helper()
	var file struct {
		APIVersion  int `yaml:"apiVersion"`
		Datasources []datasource
	}
	decodeYAML(t, "ops/grafana/provisioning/datasources/datasources.yaml", &file)
	if file.APIVersion != 1 {
		t.Fatalf("datasources apiVersion %d", file.APIVersion)
	}
	var types []string
	for _, ds := range file.Datasources {
		types = append(types, ds.Type+"/"+ds.UID)
	}
	slices.Sort(types)
	if want := []string{"loki/loki", "prometheus/prometheus", "tempo/tempo"}; !slices.Equal(types, want) {
		t.Fatalf("datasources (type/uid) %v, want %v", types, want)
	}
	return file.Datasources
}

// decodeYAML decodes the keys v names from a repository YAML file and ignores the rest: the
// component that reads the file validates it in full.
func decodeYAML(t *testing.T, rel string, v any) {
	t.Helper()
	if err := yaml.Unmarshal(readRepoFile(t, rel), v); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
}

func TestPrometheusScrapesEveryNode(t *testing.T) {
	project := loadStack(t)
	cfg, err := promconfig.LoadFile(filepath.Join(repoRoot(t), "ops", "prometheus", "prometheus.yml"), false, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	jobs := map[string]*promconfig.ScrapeConfig{}
	for _, sc := range cfg.ScrapeConfigs {
		jobs[sc.JobName] = sc
		// Every target is a service of the stack, on a port it listens on.
		for _, target := range staticTargets(t, sc) {
			host, port, err := net.SplitHostPort(target)
			if err != nil {
				t.Errorf("job %s: target %q: %v", sc.JobName, target, err)
				continue
			}
			if host == "localhost" && sc.JobName == "prometheus" {
				continue
			}
			if _, ok := project.Services[host]; !ok {
				t.Errorf("job %s scrapes %s, not a service of the stack", sc.JobName, target)
			}
			if strings.HasPrefix(host, "kura-") && port != "4000" {
				t.Errorf("job %s scrapes %s, not the nodes' HTTP port 4000", sc.JobName, target)
			}
		}
	}
	kura := jobs["kura"]
	if kura == nil {
		t.Fatalf("no kura job in %v", slices.Sorted(maps.Keys(jobs)))
	}
	if kura.MetricsPath != "/metrics" || kura.Scheme != "http" {
		t.Errorf("kura job scrapes %s://…%s", kura.Scheme, kura.MetricsPath)
	}
	targets := staticTargets(t, kura)
	var want []string
	for _, n := range stackNodes {
		want = append(want, n.service+":4000")
	}
	if !slices.Equal(slices.Sorted(slices.Values(targets)), slices.Sorted(slices.Values(want))) {
		t.Errorf("kura job targets %v, want %v", targets, want)
	}
	// The relabelling names each node's series after its service: instance="kura-us".
	for _, target := range targets {
		lb := labels.NewBuilder(labels.FromStrings("__address__", target, "job", "kura"))
		if !relabel.ProcessBuilder(lb, kura.RelabelConfigs...) {
			t.Errorf("relabelling drops %s", target)
			continue
		}
		host, _, _ := net.SplitHostPort(target)
		if got := lb.Get("instance"); got != host {
			t.Errorf("%s gets instance=%q, want %q", target, got, host)
		}
	}
	for _, job := range []string{"prometheus", "grafana", "loki", "promtail", "tempo"} {
		if jobs[job] == nil {
			t.Errorf("no %s job", job)
		}
	}
}

// staticTargets returns the __address__ of every static target of a scrape job.
func staticTargets(t *testing.T, sc *promconfig.ScrapeConfig) []string {
	t.Helper()
	var out []string
	for _, d := range sc.ServiceDiscoveryConfigs {
		static, ok := d.(discovery.StaticConfig)
		if !ok {
			t.Errorf("job %s uses %T; the stack's targets are fixed", sc.JobName, d)
			continue
		}
		for _, g := range static {
			for _, target := range g.Targets {
				out = append(out, string(target[model.AddressLabel]))
			}
		}
	}
	return out
}

func TestLogAndTraceBackends(t *testing.T) {
	project := loadStack(t)

	// Tempo receives OTLP/HTTP where the nodes send it, and serves Grafana on 3200.
	var tempo struct {
		Server struct {
			HTTPListenPort int `yaml:"http_listen_port"`
		}
		Distributor struct {
			Receivers struct {
				OTLP struct {
					Protocols struct {
						HTTP struct{ Endpoint string }
						GRPC struct{ Endpoint string }
					}
				} `yaml:"otlp"`
			}
		}
	}
	decodeYAML(t, "ops/tempo/tempo.yaml", &tempo)
	if tempo.Server.HTTPListenPort != 3200 {
		t.Errorf("tempo serves on %d, want 3200", tempo.Server.HTTPListenPort)
	}
	otlp := tempo.Distributor.Receivers.OTLP.Protocols.HTTP.Endpoint
	for _, n := range stackNodes {
		endpoint, err := url.Parse(env(project.Services[n.service])["KURA_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
		if err != nil {
			t.Fatal(err)
		}
		// Tempo's own default binds localhost only, which no other container reaches.
		if host, port, _ := net.SplitHostPort(otlp); host != "0.0.0.0" || port != endpoint.Port() || endpoint.Hostname() != "tempo" || endpoint.Path != "/v1/traces" {
			t.Errorf("%s sends traces to %s; tempo's OTLP/HTTP receiver listens on %q", n.service, endpoint, otlp)
		}
	}

	// Loki listens where Promtail pushes and Grafana reads.
	var loki struct {
		Server struct {
			HTTPListenPort int `yaml:"http_listen_port"`
		}
	}
	decodeYAML(t, "ops/loki/loki.yaml", &loki)
	if loki.Server.HTTPListenPort != 3100 {
		t.Errorf("loki serves on %d, want 3100", loki.Server.HTTPListenPort)
	}

	// Promtail selects exactly the containers labelled like the nodes and pushes to Loki.
	var promtail struct {
		Clients []struct{ URL string }
		Server  struct {
			HTTPListenPort int `yaml:"http_listen_port"`
		}
		ScrapeConfigs []struct {
			JobName         string `yaml:"job_name"`
			DockerSDConfigs []struct {
				Host    string
				Filters []struct {
					Name   string
					Values []string
				}
			} `yaml:"docker_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	decodeYAML(t, "ops/promtail/promtail.yaml", &promtail)
	if len(promtail.Clients) != 1 || promtail.Clients[0].URL != "http://loki:3100/loki/api/v1/push" {
		t.Errorf("promtail pushes to %+v, want http://loki:3100/loki/api/v1/push", promtail.Clients)
	}
	if promtail.Server.HTTPListenPort != 9080 {
		t.Errorf("promtail serves its metrics on %d; prometheus.yml scrapes 9080", promtail.Server.HTTPListenPort)
	}
	var filters []string
	for _, sc := range promtail.ScrapeConfigs {
		for _, sd := range sc.DockerSDConfigs {
			if sd.Host != "unix:///var/run/docker.sock" {
				t.Errorf("promtail asks Docker at %s, not the mounted socket", sd.Host)
			}
			for _, f := range sd.Filters {
				if f.Name == "label" {
					filters = append(filters, f.Values...)
				}
			}
		}
	}
	if !slices.Equal(filters, []string{"io.kuracache.logs=json"}) {
		t.Errorf("promtail selects containers by %v, want the nodes' label io.kuracache.logs=json", filters)
	}
	for name, s := range project.Services {
		if _, isNode := s.Labels["io.kuracache.logs"]; isNode != strings.HasPrefix(name, "kura-") {
			t.Errorf("%s: promtail would ship its logs: %v", name, isNode)
		}
	}
}
