-- Argo CD health of a Hedge ModelDeployment (hedge.dev/v1alpha1), read from its conditions:
-- Degraded=True -> Degraded (an aborted rollout too), a paused rollout (Progressing reason
-- RolloutPaused) -> Suspended, Progressing=True -> Progressing, Ready=True -> Healthy,
-- Ready=False while Progressing=False (nothing will make it ready) -> Degraded, anything else
-- (no status yet, an unobserved generation, Unknown conditions) -> Progressing.
local hs = {status = "Progressing", message = "Waiting for the Hedge operator to report status"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the Hedge operator to observe generation " .. tostring(generation)
  return hs
end
local conditions = {}
for _, condition in ipairs(obj.status.conditions) do
  if condition.type ~= nil then
    conditions[condition.type] = condition
  end
end
local function describe(condition)
  local text = condition.type .. "=" .. tostring(condition.status)
  if condition.reason ~= nil and condition.reason ~= "" then
    text = text .. " (" .. condition.reason .. ")"
  end
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end
local ready = conditions["Ready"]
local degraded = conditions["Degraded"]
local progressing = conditions["Progressing"]
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
elseif progressing ~= nil and progressing.reason == "RolloutPaused" then
  -- Held by a person (hedge rollout pause) or by spec.rollout.paused, as a paused Rollout.
  hs.status = "Suspended"
  hs.message = describe(progressing)
elseif progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(progressing)
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
elseif ready ~= nil and ready.status == "False" and progressing ~= nil
    and progressing.status == "False" then
  -- Not ready and nothing is moving towards ready (for example an invalid spec).
  hs.status = "Degraded"
  hs.message = describe(ready)
elseif ready ~= nil then
  hs.message = describe(ready)
end
return hs
