// Command vcsim starts govmomi's vCenter simulator for statsfeeder's tests and benchmarks.
//
// It is a thin wrapper over github.com/vmware/govmomi/simulator, which since govmomi v0.47
// can no longer be installed with `go install …/vcsim@version`. It takes only the flags the
// project uses and prints one line "vcsim ready URL" once it serves requests.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/google/uuid"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// limitedPerformanceManager refuses QueryPerf calls that ask for more entity x metric ids
// than a limit, as a real vCenter does past config.vpxd.stats.maxQueryMetrics (which the
// simulator otherwise ignores). The option itself is not published, as on vCenters where it
// is unset and the built-in default applies.
type limitedPerformanceManager struct {
	*simulator.PerformanceManager
	limit int
}

func (p *limitedPerformanceManager) QueryPerf(ctx *simulator.Context, req *types.QueryPerf) soap.HasFault {
	asked := 0
	for _, spec := range req.QuerySpec {
		asked += len(spec.MetricId)
	}
	if asked > p.limit {
		body := new(methods.QueryPerfBody)
		body.Fault_ = simulator.Fault(
			fmt.Sprintf("This operation is restricted by the administrator - 'vpxd.stats.maxQueryMetrics' (%d > %d). Contact your system administrator.", asked, p.limit),
			&types.RestrictedByAdministrator{Details: "vpxd.stats.maxQueryMetrics"})
		return body
	}
	return p.PerformanceManager.QueryPerf(ctx, req)
}

// parseMethodDelay reads "Method:ms,Method:ms" into the map the simulator expects.
func parseMethodDelay(spec string) (map[string]int, error) {
	delays := map[string]int{}
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		method, ms, found := strings.Cut(item, ":")
		value, err := strconv.Atoi(ms)
		if !found || method == "" || err != nil || value < 0 {
			return nil, fmt.Errorf("bad -method-delay entry %q (want Method:milliseconds)", item)
		}
		delays[method] = value
	}
	return delays, nil
}

func main() {
	listen := flag.String("l", "127.0.0.1:8989", "listen address host:port")
	username := flag.String("username", "user", "login user name")
	password := flag.String("password", "pass", "login password")
	certFile := flag.String("tlscert", "", "PEM certificate (chain) to serve; empty serves plain HTTP")
	keyFile := flag.String("tlskey", "", "PEM private key of -tlscert")
	dc := flag.Int("dc", 1, "datacenters")
	cluster := flag.Int("cluster", 1, "clusters per datacenter")
	host := flag.Int("host", 2, "hosts per cluster")
	vm := flag.Int("vm", 4, "virtual machines per resource pool")
	pool := flag.Int("pool", 0, "child resource pools per cluster")
	standalone := flag.Int("standalone-host", 0, "standalone hosts per datacenter")
	datastores := flag.Int("ds", 1, "datastores")
	delay := flag.Int("delay", 0, "milliseconds added to every SOAP call")
	methodDelay := flag.String("method-delay", "", "per-method delay, e.g. QueryPerf:2000,RetrievePropertiesEx:100")
	maxQueryMetrics := flag.Int("max-query-metrics", 0, "refuse QueryPerf calls asking for more entity x metric ids (0: no limit)")
	trace := flag.Bool("trace", false, "write SOAP requests and responses to -trace-file")
	traceFile := flag.String("trace-file", "", "trace output file (default stderr)")
	instanceUUID := flag.String("instance-uuid", "", "vCenter's about.instanceUuid (default: derived from -l, so that each simulator on a host has its own, as real vCenters do, and keeps it across restarts)")
	flag.Parse()

	fail := func(err error) {
		fmt.Fprintf(os.Stderr, "vcsim: %v\n", err)
		os.Exit(1)
	}

	delays, err := parseMethodDelay(*methodDelay)
	if err != nil {
		fail(err)
	}
	if *trace {
		simulator.Trace = true
		if *traceFile != "" {
			out, err := os.OpenFile(*traceFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				fail(err)
			}
			simulator.TraceFile = out
		}
	}

	model := simulator.VPX()
	model.Datacenter = *dc
	model.Cluster = *cluster
	model.ClusterHost = *host
	model.Machine = *vm
	model.Pool = *pool
	model.Host = *standalone
	model.Datastore = *datastores
	model.DelayConfig.Delay = *delay
	model.DelayConfig.MethodDelay = delays
	if err := model.Create(); err != nil {
		fail(err)
	}
	defer model.Remove()
	if *maxQueryMetrics > 0 {
		registry := model.Map()
		perf := registry.Get(types.ManagedObjectReference{Type: "PerformanceManager", Value: "PerfMgr"})
		registry.Put(&limitedPerformanceManager{perf.(*simulator.PerformanceManager), *maxQueryMetrics})
	}

	// The simulator derives its instanceUuid from the host's network card: every simulator on
	// one machine would claim to be the same vCenter.
	if *instanceUUID == "" {
		*instanceUUID = uuid.NewSHA1(uuid.NameSpaceURL, []byte("vcsim://"+*listen)).String()
	}
	instance := model.Map().Get(vim25.ServiceInstance).(*simulator.ServiceInstance)
	instance.Content.About.InstanceUuid = *instanceUUID

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}
	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fail(err)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	server := model.Service.NewServer()
	defer server.Close()

	count := model.Count()
	fmt.Printf("vcsim ready %s (govmomi simulator: %d datacenters, %d clusters, %d hosts, %d VMs)\n",
		server.URL.Redacted(), count.Datacenter, count.Cluster, count.Host, count.Machine)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	<-signals
}
