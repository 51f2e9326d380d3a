package tunnel

// UDPOffloader is implemented by Conns that can batch datagrams in the
// kernel with UDP segmentation offload (GSO, UDP_SEGMENT) on send and UDP
// receive offload (GRO, UDP_GRO) on receive. Callers find it by type
// assertion; a Conn without it uses neither.
//
// Neither offload changes the wire: each datagram still carries exactly one
// inner packet, whether or not the kernel batched it.
type UDPOffloader interface {
	UDPOffload() UDPOffloadState
}

// UDPOffloadState is a snapshot of a Conn's UDP offloads.
type UDPOffloadState struct {
	// GSO and GRO report whether each offload is in use now. GSO turns off
	// for good if the kernel refuses it at run time.
	GSO, GRO bool
	// Fallbacks counts offloads turned off because the kernel refused
	// them, at open or at run time (EIO, EINVAL).
	Fallbacks uint64
	// GSOSends counts messages that carried several datagrams to the
	// kernel in one piece; GROReceives counts received messages that
	// carried several. Both stay 0 when the offload is not at work.
	GSOSends, GROReceives uint64
}
