// Package cluster is the node's membership in a Kura cluster and the only user of
// hashicorp/memberlist: it joins and re-joins seeds (KURA_PEERS, DNS), admits only its own
// tenant's nodes and reports peer changes to subscribers such as the outbox. Timings and their
// reasons: docs/cluster.md.
package cluster
