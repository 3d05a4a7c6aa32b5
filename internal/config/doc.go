// Package config turns every KURA_* variable into one validated, typed Config, with the
// runtime budgets derived from the host, and reports every problem at once, each naming its
// variable, so an operator fixes a bad deployment in one round trip. How the budgets are
// derived: docs/config.md.
package config
