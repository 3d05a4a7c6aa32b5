package reapi

import (
	"context"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	semver "github.com/bazelbuild/remote-apis/build/bazel/semver"
)

// capabilitiesServer answers GetCapabilities. Bazel calls it once per command and aborts the
// build when it fails, so it must not depend on the store.
type capabilitiesServer struct {
	repb.UnimplementedCapabilitiesServer
	s *Server
}

func (c *capabilitiesServer) GetCapabilities(_ context.Context, req *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	if _, err := namespaceOf(req.GetInstanceName()); err != nil {
		return nil, toStatus(err)
	}
	cfg := c.s.cfg
	return &repb.ServerCapabilities{
		CacheCapabilities: &repb.CacheCapabilities{
			DigestFunctions:               supportedDigestFunctions,
			ActionCacheUpdateCapabilities: &repb.ActionCacheUpdateCapabilities{UpdateEnabled: true},
			MaxBatchTotalSizeBytes:        cfg.MaxBatchTotalSizeBytes,
			// Outputs are stored, never materialized on this server, so absolute targets are
			// as safe as relative ones.
			SymlinkAbsolutePathStrategy:     repb.SymlinkAbsolutePathStrategy_ALLOWED,
			SupportedCompressors:            []repb.Compressor_Value{repb.Compressor_IDENTITY, repb.Compressor_ZSTD},
			SupportedBatchUpdateCompressors: []repb.Compressor_Value{repb.Compressor_IDENTITY, repb.Compressor_ZSTD},
			MaxCasBlobSizeBytes:             cfg.MaxCASBlobSizeBytes,
		},
		DeprecatedApiVersion: &semver.SemVer{Major: 2, Minor: 0},
		LowApiVersion:        &semver.SemVer{Major: 2, Minor: 0},
		HighApiVersion:       &semver.SemVer{Major: 2, Minor: 3},
	}, nil
}
