package guard

import (
	"context"
	"time"

	"github.com/leasehold/leasehold/client"
)

// ForBudget returns b as the guard's Budget: every call the guard makes pays
// from b, shared with every process using b's scope; a provider's 429 blocks
// b in all of them, and its remaining headers lower b's rules.
func ForBudget(b *client.Budget) Budget { return leaseholdBudget{b} }

// ForBudgets returns a Config.Budget that pays each call from the Budget
// budget returns for it (typically one per model:
// c.Budget("openai:org-7:"+call.Model, rules...)), or sends it unguarded
// if budget returns nil.
func ForBudgets(budget func(Call) *client.Budget) func(Call) Budget {
	return func(c Call) Budget {
		if b := budget(c); b != nil {
			return leaseholdBudget{b}
		}
		return nil
	}
}

// leaseholdBudget adapts a *client.Budget to Budget.
type leaseholdBudget struct{ b *client.Budget }

func (l leaseholdBudget) Reserve(ctx context.Context, estimate Cost) (Reservation, error) {
	r, err := l.b.Reserve(ctx, client.Cost(estimate))
	if err != nil {
		return nil, err
	}
	return leaseholdReservation{r}, nil
}

func (l leaseholdBudget) Block(ctx context.Context, wait time.Duration) error {
	return l.b.Block(ctx, wait)
}

func (l leaseholdBudget) Lower(ctx context.Context, dim Dimension, remaining int64, reset time.Duration) error {
	var d client.Dimension
	switch dim {
	case Requests:
		d = client.Requests
	case InputTokens:
		d = client.InputTokens
	case OutputTokens:
		d = client.OutputTokens
	case Tokens:
		d = client.Tokens
	default:
		return nil
	}
	return l.b.Lower(ctx, d, remaining, reset)
}

// leaseholdReservation adapts a client.Reservation to Reservation.
type leaseholdReservation struct{ r client.Reservation }

func (l leaseholdReservation) Settle(ctx context.Context, actual Cost) error {
	return l.r.Settle(ctx, client.Cost(actual))
}

func (l leaseholdReservation) Cancel() error { return l.r.Cancel() }

func (l leaseholdReservation) KeepAlive(ctx context.Context) error { return l.r.KeepAlive(ctx) }
