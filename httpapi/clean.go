package httpapi

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/kuracache/kura/storage"
)

// Namespace clean: DELETE /api/cache/clean?tenant_id&namespace_id removes every artifact of
// every kind in the namespace (REAPI blobs included when the instance name equals it). The
// store records a tombstone that replicates, so older writes arriving later cannot resurrect
// anything.

func (s *Server) handleClean(c echo.Context) error {
	q, err := parseQuery(c.Request().URL.RawQuery)
	if err != nil {
		return err
	}
	tenant, namespace, err := tenantNamespace(q)
	if err != nil {
		return err
	}
	t := target{key: storage.Key{Tenant: tenant, Namespace: namespace}}
	if err := s.authorize(c, OpNamespaceDelete, t, q, false, ""); err != nil {
		return err
	}
	if err := s.local.DeleteNamespace(c.Request().Context(), tenant, namespace, 0); err != nil {
		return storeError("clean namespace", "", err)
	}
	s.log.InfoContext(c.Request().Context(), "namespace cleaned", "tenant_id", tenant, "namespace_id", namespace)
	return c.NoContent(http.StatusNoContent)
}
