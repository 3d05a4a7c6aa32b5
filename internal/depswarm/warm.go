package depswarm

import (
	_ "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	_ "github.com/cockroachdb/pebble/v2"
	_ "github.com/hashicorp/memberlist"
	_ "github.com/klauspost/compress/zstd"
	_ "github.com/labstack/echo/v4"
	_ "github.com/oklog/run"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "go.uber.org/goleak"
	_ "golang.org/x/sync/errgroup"
	_ "google.golang.org/genproto/googleapis/bytestream"
	_ "google.golang.org/grpc"
)
