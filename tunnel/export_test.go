package tunnel

// Hooks for the external tests, which cannot live in package tunnel because
// they use tuntest, which imports it.

// StepTUNToUDP runs one TUN→UDP batch, as the forwarding loop does.
func (f *Forwarder) StepTUNToUDP() error { return f.tunToUDP() }

// StepUDPToTUN runs one UDP→TUN batch, as the forwarding loop does.
func (f *Forwarder) StepUDPToTUN() error { return f.udpToTUN() }
