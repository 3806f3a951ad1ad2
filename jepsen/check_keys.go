//go:build unix

package jepsen

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Algorithms a KeySpec may name.
const (
	AlgorithmTokenBucket   = "token-bucket"
	AlgorithmSlidingWindow = "sliding-window"
)

// DefaultMaxLease is the lease cap of a key whose KeySpec names none, as the
// cluster documents it.
const DefaultMaxLease = 2 * time.Second

// Ranges a KeySpec must lie in, so that every product the checkers form fits
// their 128-bit integers with room to spare.
const (
	maxSpecTokens   = int64(1) << 40         // Limit, Burst
	maxSpecDuration = time.Duration(1) << 50 // Period, MaxLease: about 13 days
)

// KeySpec is one key's limit in a run, as the harness configured it
// (keys.json). It is the checkers' whole knowledge of the key: they never
// ask the system under test what its limits are.
type KeySpec struct {
	Key string `json:"key"`
	// Algorithm is AlgorithmTokenBucket or AlgorithmSlidingWindow.
	Algorithm string `json:"algorithm"`
	// Limit is the tokens added per Period (token bucket) or admitted per
	// window of length Period (sliding window). Positive.
	Limit int64 `json:"limit"`
	// Period is the refill period or the window length. Positive.
	Period time.Duration `json:"period_ns"`
	// Burst is a token bucket's capacity, B. 0 means Limit, as in the
	// cluster and the SDK. Unused for sliding windows.
	Burst int64 `json:"burst,omitempty"`
	// Strict drops the r·Λ term of a token bucket's admission bound.
	Strict bool `json:"strict,omitempty"`
	// MaxLease is the longest lease the key grants, Λ. 0 means
	// DefaultMaxLease; a sliding window caps it at its window.
	MaxLease time.Duration `json:"max_lease_ns,omitempty"`
	// Light: the workload asks for less than the limit, so the key's
	// efficiency says nothing about the limiter; it is left out of the
	// overall efficiency (and still reported per key).
	Light bool `json:"light,omitempty"`
	// Group names the group of keys this one belongs to, if any: many keys
	// with the same limit, checked one by one, whose efficiency is reported
	// for the group as a whole (efficiency:group:<name>) rather than per key.
	Group string `json:"group,omitempty"`
	// Budget names the Budget scope this key is a rule of, if any: its
	// use is recorded as reserve, settle and cancel operations, checked by
	// CheckBudget against B + D + r·(Δ + Λ).
	Budget string `json:"budget,omitempty"`
	// MaxDebt is D, how far a Budget rule's key may go below empty when
	// calls settle above what they reserved. Only with Budget.
	MaxDebt int64 `json:"max_debt,omitempty"`
}

// Normalize returns k with its defaults filled in: Burst 0 is Limit,
// MaxLease 0 is DefaultMaxLease, and a sliding window's MaxLease is at most
// its Period.
func (k KeySpec) Normalize() KeySpec {
	if k.Burst == 0 && k.Algorithm == AlgorithmTokenBucket {
		k.Burst = k.Limit
	}
	if k.MaxLease == 0 {
		k.MaxLease = DefaultMaxLease
	}
	if k.Algorithm == AlgorithmSlidingWindow && k.Period > 0 {
		k.MaxLease = min(k.MaxLease, k.Period)
	}
	return k
}

// Validate reports every problem with k at once.
func (k KeySpec) Validate() error {
	var errs []error
	if k.Key == "" {
		errs = append(errs, errors.New("key has no name"))
	}
	if k.Algorithm != AlgorithmTokenBucket && k.Algorithm != AlgorithmSlidingWindow {
		errs = append(errs, fmt.Errorf("algorithm %q: want %q or %q", k.Algorithm, AlgorithmTokenBucket, AlgorithmSlidingWindow))
	}
	if k.Limit <= 0 || k.Limit > maxSpecTokens {
		errs = append(errs, fmt.Errorf("limit %d must be in [1, %d]", k.Limit, maxSpecTokens))
	}
	if k.Period <= 0 || k.Period > maxSpecDuration {
		errs = append(errs, fmt.Errorf("period %v must be in (0, %v]", k.Period, maxSpecDuration))
	}
	if k.Burst < 0 || k.Burst > maxSpecTokens {
		errs = append(errs, fmt.Errorf("burst %d must be in [0, %d]", k.Burst, maxSpecTokens))
	}
	if k.MaxDebt < 0 || k.MaxDebt > maxSpecTokens {
		errs = append(errs, fmt.Errorf("max debt %d must be in [0, %d]", k.MaxDebt, maxSpecTokens))
	}
	if k.Budget != "" && k.Algorithm != AlgorithmTokenBucket {
		errs = append(errs, errors.New("a budget rule is a token bucket"))
	}
	if k.MaxLease < 0 || k.MaxLease > maxSpecDuration {
		errs = append(errs, fmt.Errorf("max lease %v must be in [0, %v]", k.MaxLease, maxSpecDuration))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("key %q: %w", k.Key, err)
	}
	return nil
}

// WriteKeys writes keys as an indented JSON array (keys.json).
func WriteKeys(w io.Writer, keys []KeySpec) error {
	if keys == nil {
		keys = []KeySpec{}
	}
	b, err := json.MarshalIndent(keys, "", "  ")
	if err != nil {
		return fmt.Errorf("encode keys: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ReadKeys reads a JSON array of KeySpecs (keys.json) and validates each;
// a key named twice is an error.
func ReadKeys(r io.Reader) ([]KeySpec, error) {
	var keys []KeySpec
	if err := json.NewDecoder(r).Decode(&keys); err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	seen := make(map[string]bool)
	var errs []error
	for _, k := range keys {
		if err := k.Validate(); err != nil {
			errs = append(errs, err)
		}
		if seen[k.Key] {
			errs = append(errs, fmt.Errorf("key %q is named twice", k.Key))
		}
		seen[k.Key] = true
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	return keys, nil
}
