package fakeprovider

// FaultKind is what an injected fault does.
type FaultKind uint8

const (
	// FaultStatus answers with Fault.Status (500, 503, 408…) and an error
	// body, before any admission.
	FaultStatus FaultKind = iota + 1
	// FaultHang sends nothing until the caller gives up: a timeout.
	FaultHang
	// FaultCut admits the request, then cuts the connection after
	// Fault.After streamed events (a JSON body is cut halfway). The
	// admission's charge is kept: nothing is refunded.
	FaultCut
)

// Fault is one injected fault; each applies to one request.
type Fault struct {
	Kind FaultKind
	// Status is FaultStatus's HTTP status.
	Status int
	// After is the events FaultCut lets through before it cuts.
	After int
}

// Inject queues faults for the next requests to known endpoints, one each,
// in order.
func (p *Provider) Inject(faults ...Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mu.faults = append(p.mu.faults, faults...)
}

// Pending returns the injected faults not yet used.
func (p *Provider) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.mu.faults)
}
