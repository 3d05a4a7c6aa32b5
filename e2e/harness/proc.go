package harness

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// RSSBytes is the node process's resident set (VmRSS of /proc/PID/status), for tests that
// bound memory growth under load.
func (n *Node) RSSBytes() (int64, error) {
	pid := n.Pid()
	if pid == 0 {
		return 0, fmt.Errorf("%s is not running", n.Name)
	}
	v, err := procField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:")
	if err != nil {
		return 0, err
	}
	return v * 1024, nil // the kernel reports kB
}

// ReadBytes is how many bytes the node process has read through read(2) and its kin, from
// sockets and files alike (rchar of /proc/PID/io): the delta across one request on an
// otherwise idle node is what the server read of it.
func (n *Node) ReadBytes() (int64, error) {
	pid := n.Pid()
	if pid == 0 {
		return 0, fmt.Errorf("%s is not running", n.Name)
	}
	return procField(fmt.Sprintf("/proc/%d/io", pid), "rchar:")
}

// procField reads the first number after prefix in a "name: value" file of /proc.
func procField(path, prefix string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		fields := strings.Fields(strings.TrimPrefix(line, prefix))
		if len(fields) == 0 {
			break
		}
		return strconv.ParseInt(fields[0], 10, 64)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no %s line", path, prefix)
}
