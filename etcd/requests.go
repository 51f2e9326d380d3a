package etcd

import (
	"context"
	"maps"
	"strings"
	"sync"

	"google.golang.org/grpc"
)

// requestCounter counts the requests this client makes to etcd, by gRPC
// method: unary calls, and each message sent on a stream (a lease
// keep-alive, a watch creation). At thousands of nodes etcd's load is the
// sum of these, so operators size etcd from them.
type requestCounter struct {
	mu sync.Mutex
	n  map[string]uint64
}

func (c *requestCounter) add(fullMethod string) {
	// "/etcdserverpb.KV/Range" → "Range": method names are unique across
	// etcd's services.
	name := fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]
	c.mu.Lock()
	if c.n == nil {
		c.n = make(map[string]uint64)
	}
	c.n[name]++
	c.mu.Unlock()
}

func (c *requestCounter) snapshot() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.n)
}

func (c *requestCounter) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	c.add(method)
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (c *requestCounter) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return countedStream{cs, c, method}, nil
}

type countedStream struct {
	grpc.ClientStream
	c      *requestCounter
	method string
}

func (s countedStream) SendMsg(m any) error {
	s.c.add(s.method)
	return s.ClientStream.SendMsg(m)
}

// Requests returns how many requests this store has sent to etcd, by gRPC
// method name ("Range", "Put", "LeaseKeepAlive", "Watch", ...).
func (s *Store) Requests() map[string]uint64 { return s.requests.snapshot() }
