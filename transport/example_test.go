package transport_test

import (
	"errors"
	"fmt"

	"github.com/leasehold/leasehold/transport"
)

// A client passes every RPC error through FromStatus and decides what to do
// with errors.Is and errors.As alone. Here the errors a server would send are
// made with ToStatus.
func ExampleFromStatus() {
	sent := []error{
		&transport.NotLeaderError{LeaderID: "n2", LeaderRaftAddr: "10.0.0.2:7000"},
		&transport.InvalidError{Field: "items[1].key", Reason: "key is 600 bytes; the most is 512"},
		fmt.Errorf("%w: leadership lost", transport.ErrUnknownOutcome),
		transport.ErrNoLimit,
	}
	for _, s := range sent {
		err := transport.FromStatus(transport.ToStatus(s)) // what the client gets back
		var notLeader *transport.NotLeaderError
		var invalid *transport.InvalidError
		switch {
		case errors.As(err, &notLeader):
			fmt.Println("redirect to", notLeader.LeaderID)
		case errors.As(err, &invalid):
			fmt.Println("fix", invalid.Field+":", invalid.Reason)
		case errors.Is(err, transport.ErrUnknownOutcome):
			fmt.Println("retry with the same client_id and seq")
		case errors.Is(err, transport.ErrNoLimit):
			fmt.Println("send a limit with the item")
		}
	}
	// Output:
	// redirect to n2
	// fix items[1].key: key is 600 bytes; the most is 512
	// retry with the same client_id and seq
	// send a limit with the item
}
