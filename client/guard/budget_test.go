package guard_test

import (
	"context"
	"sync"

	"github.com/leasehold/leasehold/client/guard"
	"github.com/leasehold/leasehold/client/guard/guardtest"
)

// recordingBudget records the estimates reserved.
type recordingBudget struct {
	*guardtest.Budget
	mu  sync.Mutex
	est []guard.Cost
}

func (b *recordingBudget) Reserve(ctx context.Context, c guard.Cost) (guard.Reservation, error) {
	b.mu.Lock()
	b.est = append(b.est, c)
	b.mu.Unlock()
	return b.Budget.Reserve(ctx, c)
}

func (b *recordingBudget) estimates() []guard.Cost {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]guard.Cost(nil), b.est...)
}
