// Package cgroup reads this process's cgroup memory limit and working set, for cgroup v2 and
// v1. It is the one place that knows the cgroup file layout: internal/config derives the
// memory budgets from the limit, internal/memory samples the working set of the same cgroup.
// Every function takes a root prepended to /sys/fs/cgroup and /proc so tests use fake trees.
package cgroup
