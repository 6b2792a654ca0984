-- RTFSyn node: Orthanc auto-routing rule.
--
-- When a series becomes stable (no new instance for "StableAge" seconds, see
-- orthanc.json), send it to the RTFSyn node if it is eligible:
--   * Modality is MR;
--   * it is not synthetic (Synthetic Data (0008,001C) is not YES);
--   * it was not made by the node (Manufacturer is not RTFSYN_MANUFACTURER).
-- The derived series that the node sends back is therefore never routed again.
--
-- RTFSYN_MODALITY is the symbolic name of the node in "DicomModalities"
-- (orthanc.json), not its AE title.
--
-- Orthanc 1.10 notes: SendToModality() fails for this use ("Internal error"),
-- so the store is asked through the REST API; DumpJson(x, true) would turn the
-- boolean and numbers into strings, so DumpJson(x) is used.

RTFSYN_MODALITY = 'rtfsyn'
RTFSYN_MANUFACTURER = 'RTFSyn node'

-- Tags of one instance of the series (reads a single file), keyed by
-- "gggg,eeee" in lower case: Orthanc 1.10's dictionary has no name for
-- Synthetic Data (0008,001C), so tag numbers are used throughout.
local function FirstInstanceTags(seriesId)
   local series = ParseJson(RestApiGet('/series/' .. seriesId))
   if series == nil or series['Instances'] == nil or series['Instances'][1] == nil then
      return nil
   end
   local instanceId = series['Instances'][1]
   return ParseJson(RestApiGet('/instances/' .. instanceId .. '/tags?short'))
end

-- Why a stable series is not sent to the node, or nil when it is eligible.
-- "tags" are the series' main DICOM tags as Orthanc passes them to Lua.
local function IneligibleReason(seriesId, tags)
   if tags['Modality'] ~= 'MR' then
      return 'Modality is not MR'
   end
   if tags['Manufacturer'] == RTFSYN_MANUFACTURER then
      return 'made by the RTFSyn node'
   end
   local instanceTags = FirstInstanceTags(seriesId)
   if instanceTags == nil then
      return 'series has no instance'
   end
   local synthetic = instanceTags['0008,001c']
   if type(synthetic) == 'string' and string.upper(synthetic) == 'YES' then
      return 'Synthetic Data is YES'
   end
   if instanceTags['0008,0070'] == RTFSYN_MANUFACTURER then
      return 'made by the RTFSyn node'
   end
   return nil
end

function OnStableSeries(seriesId, tags, metadata)
   local reason = IneligibleReason(seriesId, tags)
   if reason ~= nil then
      print('rtfsyn autoroute: series ' .. seriesId .. ' not routed: ' .. reason)
      return
   end
   local request = {}
   request['Resources'] = { seriesId }
   request['Asynchronous'] = true
   RestApiPost('/modalities/' .. RTFSYN_MODALITY .. '/store', DumpJson(request))
   print('rtfsyn autoroute: series ' .. seriesId .. ' sent to modality ' .. RTFSYN_MODALITY)
end
