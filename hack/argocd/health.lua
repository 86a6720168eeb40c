-- Argo CD health check for routemode.io/RoutingMode.
--
-- Install: copy into argocd-cm under
--   resource.customizations.health.routemode.io_RoutingMode
-- (hack/argocd/argocd-cm.yaml holds this script inline; a test keeps the two
-- identical). Argo CD passes the object as `obj`; the script returns
-- {status=..., message=...}. Only Lua's base and table libraries are used,
-- because Argo CD does not open the string library for health scripts.
--
-- Healthy     Ready=True and the status describes the current generation.
-- Degraded    Stalled=True: preflight failed, or a node failed its step
--             (and was rolled back); the rollout waits for a person.
-- Suspended   spec.rollout.paused and the rollout is not complete.
-- Progressing otherwise: no status yet, a generation not yet observed,
--             Reconciling=True, or Ready=False.

local hs = {}

local function findCondition(conditions, condType)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == condType then
      return c
    end
  end
  return nil
end

-- message returns the condition's message, or a fallback when the
-- condition or its message is missing.
local function message(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
local conditions = nil
if status ~= nil then
  conditions = status.conditions
end

if conditions == nil or #conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the routemode operator to report status"
  return hs
end

local generation = obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the routemode operator to observe generation " .. tostring(generation) ..
    " (status describes generation " .. tostring(observed or 0) .. ")"
  return hs
end

local ready = findCondition(conditions, "Ready")
local reconciling = findCondition(conditions, "Reconciling")
local stalled = findCondition(conditions, "Stalled")

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message(stalled, "The rollout stalled")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message(ready, "Every node runs the requested routing mode")
  return hs
end

local paused = obj.spec ~= nil and obj.spec.rollout ~= nil and obj.spec.rollout.paused == true
if paused then
  hs.status = "Suspended"
  if reconciling ~= nil and reconciling.message ~= nil and reconciling.message ~= "" then
    hs.message = "Rollout paused: " .. reconciling.message
  else
    hs.message = "Rollout paused: " .. message(ready, "resume it with routemodectl rollout resume")
  end
  return hs
end

hs.status = "Progressing"
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = message(reconciling, "Rolling out")
else
  hs.message = message(ready, "Waiting for the RoutingMode to become Ready")
end
return hs
