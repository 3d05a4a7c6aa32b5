package peer

import (
	"encoding/base64"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/storage"
)

// FuzzObjectHeader feeds arbitrary bytes to the header decoder the server and the client
// run on every push, fetch and listing: it must never panic, and whatever it accepts must
// be a valid key with a usable size and version that survives a round trip.
func FuzzObjectHeader(f *testing.F) {
	good, err := proto.Marshal(headerPart(infoToHeader(infoFor(key(storage.KindGradle, "k"), []byte("body"), version(1)), true)))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		var part peerpb.ObjectPart
		if proto.Unmarshal(data, &part) != nil || part.GetHeader() == nil {
			return
		}
		info, err := headerToInfo(part.GetHeader())
		if err != nil {
			return
		}
		if info.Key.Validate() != nil || info.Size < 0 || info.Version == 0 || len(info.ContentType) > MaxContentTypeBytes {
			t.Fatalf("accepted an invalid header: %+v", info)
		}
		again, err := headerToInfo(infoToHeader(info, false))
		if err != nil || again != info {
			t.Fatalf("round trip: %+v, %v; want %+v", again, err, info)
		}
	})
}

// FuzzParseInternalCredential feeds arbitrary header values to the credential parser every
// keyed server runs on every call, before any authentication: it must never panic, and what
// it accepts must be the one canonical spelling planeMAC.format would produce.
func FuzzParseInternalCredential(f *testing.F) {
	k := newPlaneMAC(clusterKey)
	f.Add(k.format(peerpb.Replication_PushObject_FullMethodName, 1_760_000_000_123))
	f.Add(k.format(peerpb.Replication_ListObjects_FullMethodName, 0))
	f.Add("")
	f.Add("v1:")
	f.Add("v1:1:")
	f.Add("v1:-1:AAAA")
	f.Add("v1:9223372036854775807:" + strings.Repeat("A", 43))
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseCredential(s)
		if err != nil {
			return
		}
		again := credentialVersion + ":" + strconv.FormatInt(c.millis, 10) + ":" + base64.RawURLEncoding.EncodeToString(c.mac[:])
		if again != s || c.millis < 0 {
			t.Fatalf("accepted %q as %+v, which spells %q", s, c, again)
		}
	})
}
