-- Argo CD health check for mlsec.io ModelDeployment, from the operator's status conditions.
--
-- Install it in argocd-cm (see manifests/argocd/README.md):
--   resource.customizations.health.mlsec.io_ModelDeployment: |
--     <this file>
--
--   Progressing  no status yet, the operator has not seen the latest spec (observedGeneration),
--                Ready unknown, or Ready=False for a reason that resolves by itself (VaultNotReady)
--   Degraded     Ready=False for any other reason (policy violation, promotion held back for
--                missing approvals or a reject, no policy, invalid spec), or rolled out in audit
--                mode with PolicyCompliant=False, or in production with PromotionApproved=False
--   Healthy      Ready=True, PolicyCompliant not False, and in production PromotionApproved=True
-- Argo CD runs Lua 5.1 (gopher-lua); this file uses nothing newer.

local hs = {}

local function condition(obj, ctype)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

-- Ready=False reasons that the operator resolves by retrying, without anyone changing anything.
local transient = { VaultNotReady = true }

local generation = 0
if obj.metadata ~= nil and obj.metadata.generation ~= nil then
  generation = obj.metadata.generation
end

local ready = condition(obj, "Ready")
local compliant = condition(obj, "PolicyCompliant")
local promotion = condition(obj, "PromotionApproved")
local stage = nil
if obj.spec ~= nil then
  stage = obj.spec.stage
end

-- The generation the operator last evaluated: Ready's, else the status's.
local observed = nil
if ready ~= nil then
  observed = ready.observedGeneration
end
if observed == nil and obj.status ~= nil then
  observed = obj.status.observedGeneration
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile"
elseif observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile generation " .. generation
elseif ready.status == "True" then
  if compliant ~= nil and compliant.status == "False" then
    hs.status = "Degraded"
    hs.message = "Policy violation: " .. text(compliant, "PolicyCompliant is False")
  elseif stage == "production" and promotion ~= nil and promotion.status == "False" then
    hs.status = "Degraded"
    hs.message = "Promotion not approved: " .. text(promotion, "PromotionApproved is False")
  else
    hs.status = "Healthy"
    hs.message = text(ready, "Ready")
  end
elseif ready.status == "False" then
  if transient[ready.reason] then
    hs.status = "Progressing"
  else
    hs.status = "Degraded"
  end
  hs.message = text(ready, "Not ready")
else
  hs.status = "Progressing"
  hs.message = text(ready, "Ready is Unknown")
end

return hs
