-- Argo CD health of a Hedge ClientPolicy (hedge.dev/v1alpha1), read from its Ready
-- condition: Ready=True (KeysFound) -> Healthy, Ready=False (a Secret missing or not
-- labelled, a key missing, an invalid spec: the tenant's to fix) -> Degraded, anything else
-- (no status yet, an unobserved generation) -> Progressing.
local hs = {status = "Progressing", message = "Waiting for the Hedge operator to check the keys"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the Hedge operator to observe generation " .. tostring(generation)
  return hs
end
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    local text = "Ready=" .. tostring(condition.status)
    if condition.reason ~= nil and condition.reason ~= "" then
      text = text .. " (" .. condition.reason .. ")"
    end
    if condition.message ~= nil and condition.message ~= "" then
      text = text .. ": " .. condition.message
    end
    hs.message = text
    if condition.status == "True" then
      hs.status = "Healthy"
    elseif condition.status == "False" then
      hs.status = "Degraded"
    end
  end
end
return hs
