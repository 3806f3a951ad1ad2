package fsm

// NewWithoutDebtCap returns a Machine whose Charge ignores every limit's
// MaxDebt: a known-bad variant, for the bound test to show that it catches
// a missing cap.
func NewWithoutDebtCap() *Machine {
	m := New()
	m.noDebtCap = true
	return m
}
