package fsm

import "time"

// Observer is told about each command as Apply applies it, with its result:
// the parts an operator counts (which command, which keys, tokens given
// back). Package cluster uses it to count per-key activity outside the
// replicated state. An Observer is not state: Capture and snapshots ignore
// it, and a Machine made by New or Restore has none. It is called on the
// goroutine that calls Apply, and must not call the Machine.
type Observer interface {
	Applied(c *Applied)
}

// Applied is a command as Apply applied it. It and everything it points to
// are valid only during the Observer's call.
type Applied struct {
	Type Type
	// TTL is an Acquire's lease TTL; 0 for a central decision and for
	// other commands.
	TTL time.Duration
	// Keys are the item keys, in order, of an Acquire, Charge or Restrict,
	// or the key of a SetLimit or DeleteLimit; they point into the log
	// entry.
	Keys [][]byte
	// Unused is the sum of a Release's unused counts; HasUnused is false
	// when it names none (it gives back every token of its lease).
	Unused    int64
	HasUnused bool
	// Result is the command's result, as Apply returns it.
	Result *Result

	keys [MaxItems][]byte
}

// SetObserver makes o the Machine's Observer (nil for none). The Machine
// calls it for every command it applies from then on, after the command's
// result is decided; a retry that gets its first result again is applied
// again, and told again.
func (m *Machine) SetObserver(o Observer) { m.observer = o }

// observe tells the observer about the command in d and its result r.
// The caller checks that there is one.
func (m *Machine) observe(d *decoder, r *Result) {
	a := &m.applied
	a.Type, a.TTL, a.Keys, a.Unused, a.HasUnused, a.Result = d.typ, 0, nil, 0, false, r
	switch d.typ {
	case TypeAcquire, TypeCharge, TypeRestrict:
		if d.typ == TypeAcquire {
			a.TTL = time.Duration(d.ttl)
		}
		n := min(len(d.items), MaxItems)
		for i := range n {
			a.keys[i] = d.items[i].key
		}
		a.Keys = a.keys[:n]
	case TypeSetLimit, TypeDeleteLimit:
		a.keys[0] = d.key
		a.Keys = a.keys[:1]
	case TypeRelease:
		for _, u := range d.unused {
			a.Unused += u
		}
		a.HasUnused = len(d.unused) > 0
	}
	m.observer.Applied(a)
	clear(a.keys[:len(a.Keys)]) // no reference into the entry stays
	a.Keys, a.Result = nil, nil
}
