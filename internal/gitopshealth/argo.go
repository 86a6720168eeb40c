// Package gitopshealth runs the GitOps health checks published for
// RoutingMode (hack/argocd/health.lua for Argo CD, kstatus for Flux) the way
// those tools run them, so tests and tools can see what Argo CD and Flux
// would report for a given object.
package gitopshealth

import (
	"encoding/json"
	"errors"
	"fmt"

	lua "github.com/yuin/gopher-lua"
)

// Argo CD health statuses a health script may return.
const (
	ArgoHealthy     = "Healthy"
	ArgoProgressing = "Progressing"
	ArgoDegraded    = "Degraded"
	ArgoSuspended   = "Suspended"
	ArgoMissing     = "Missing"
	ArgoUnknown     = "Unknown"
)

// ArgoHealth is what a health script returns.
type ArgoHealth struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

// EvalArgoHealth runs an Argo CD health script on obj (an unstructured
// object's content) as Argo CD does (argo-cd util/lua): a gopher-lua state
// with only the package, base and table libraries open, the object as the
// global table `obj`, and the script's return value read back through JSON.
func EvalArgoHealth(script string, obj map[string]any) (ArgoHealth, error) {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		L.Push(L.NewFunction(lib.fn))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		return ArgoHealth{}, fmt.Errorf("running the health script: %w", err)
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return ArgoHealth{}, errors.New("the health script did not return a table")
	}
	raw, err := json.Marshal(fromLua(ret))
	if err != nil {
		return ArgoHealth{}, err
	}
	var h ArgoHealth
	if err := json.Unmarshal(raw, &h); err != nil {
		return ArgoHealth{}, fmt.Errorf("the health script returned %s: %w", raw, err)
	}
	switch h.Status {
	case ArgoHealthy, ArgoProgressing, ArgoDegraded, ArgoSuspended, ArgoMissing, ArgoUnknown:
		return h, nil
	default:
		return ArgoHealth{}, fmt.Errorf("the health script returned status %q, which Argo CD does not know", h.Status)
	}
}

// toLua converts decoded JSON the way Argo CD does: maps become tables keyed
// by string, slices become 1-based arrays, numbers become Lua numbers.
func toLua(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case int32:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case json.Number:
		f, _ := v.Float64()
		return lua.LNumber(f)
	case map[string]any:
		t := L.NewTable()
		for k, e := range v {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	case []any:
		t := L.NewTable()
		for i, e := range v {
			t.RawSetInt(i+1, toLua(L, e))
		}
		return t
	default:
		return lua.LString(fmt.Sprint(v))
	}
}

// fromLua converts a returned table back to Go values for JSON.
func fromLua(v lua.LValue) any {
	switch v := v.(type) {
	case *lua.LTable:
		if n := v.MaxN(); n > 0 {
			out := make([]any, 0, n)
			for i := 1; i <= n; i++ {
				out = append(out, fromLua(v.RawGetInt(i)))
			}
			return out
		}
		out := map[string]any{}
		v.ForEach(func(k, e lua.LValue) { out[k.String()] = fromLua(e) })
		return out
	case lua.LString:
		return string(v)
	case lua.LNumber:
		return float64(v)
	case lua.LBool:
		return bool(v)
	default:
		return nil
	}
}
