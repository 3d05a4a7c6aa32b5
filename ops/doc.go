// Package ops holds the tests of the operating artifacts: the local compose stack
// (docker-compose.yml and the Prometheus, Grafana, Loki, Promtail and Tempo configs under ops/),
// the Dockerfile and the Taskfile. No Docker engine is needed: each file is loaded with the
// parser of the tool that reads it (compose-spec, BuildKit, Prometheus, go-task), the builds
// the image and the Taskfile run are run for real, and every dashboard query is checked against
// and evaluated over the /metrics of real nodes.
package ops
