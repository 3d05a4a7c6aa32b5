// Package cluster is the node's membership in a Kura cluster, and the only user of
// hashicorp/memberlist (SWIM gossip with Lifeguard). It joins seeds from KURA_PEERS and from
// DNS (A/AAAA or SRV), re-resolves and re-joins them every RejoinInterval so a restarted
// node or a healed partition comes back without an operator, gossips each member's
// metadata (name, region, tenant, public URL, internal-plane address), admits only nodes of
// its own tenant (and, with a gossip key, only nodes holding it), and reports peer changes
// to subscribers such as the replication outbox.
//
// Timings: memberlist's LAN preset unless Tuning overrides a field — a probe every second
// with a 500 ms ack timeout, gossip every 200 ms to 3 nodes, a full push/pull every 30 s,
// suspicion for 4·log10(N+1) probe intervals (up to 6× that without confirmations), probe
// back-off up to 8× under local degradation (Lifeguard awareness). On a LAN a crashed node is
// declared dead within a few seconds, a graceful leave propagates within one gossip round.
// Rejoin runs every 15 s: cheap (nothing is contacted when every seed is already a member)
// and short enough to heal within a minute. Tests shrink all of it to tens of milliseconds.
package cluster
