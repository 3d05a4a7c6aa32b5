// Package ops holds the operating artifacts' tests: the local compose stack (docker-compose.yml
// and the Prometheus, Grafana, Loki, Promtail and Tempo configs under ops/), the Dockerfile
// and the Taskfile. No Docker engine is needed: each file is loaded with the parser of the tool
// that reads it, the static build the image relies on is built for real, and every metric the
// dashboard queries is checked against a running node's /metrics.
package ops
