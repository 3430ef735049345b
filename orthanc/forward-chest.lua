-- forward-chest.lua: forward chest radiographs (CR/DX) to the dicom-node AI node.
--
-- Load it with the "LuaScripts" option of orthanc.json (see README.md in this folder).
--
-- When a study has received no new instance for "StableAge" seconds, Orthanc calls
-- OnStableStudy. This script then sends the CR and DX instances of that study that it has
-- not sent before to the node, in one association (REST /modalities/{id}/store, synchronous),
-- and marks each sent instance with the user metadata "ForwardedToNode" (declared in
-- "UserMetadata"). Consequences:
--   * other series of the study (CT, the node's own SR and Secondary Capture results, ...)
--     are never forwarded, so results coming back cannot loop to the node;
--   * a study that grows later (a second view, the node's results) becomes stable again,
--     and only its new CR/DX instances are sent;
--   * if the send fails (node down), nothing is marked: the error is logged, and the
--     instances are sent the next time the study becomes stable, or by hand from the
--     REST API (POST /modalities/DICOMNODE/store).
--
-- Optional settings, read from the Orthanc configuration (all keys may be left out):
--   "ForwardChest" : {
--     "TargetModality" : "DICOMNODE",   // key of the node in "DicomModalities"
--     "Modalities"     : [ "CR", "DX" ]  // series Modality values to forward
--   }
-- The C-STORE timeout is the node's "Timeout" in "DicomModalities", else "DicomScuTimeout".

local MARKER = 'ForwardedToNode'

local function Settings()
   local settings = {
      target = 'DICOMNODE',
      modalities = { CR = true, DX = true },
   }
   local configuration = GetOrthancConfiguration()
   local custom = configuration and configuration['ForwardChest']
   if type(custom) == 'table' then
      if type(custom['TargetModality']) == 'string' then
         settings.target = custom['TargetModality']
      end
      if type(custom['Modalities']) == 'table' then
         settings.modalities = {}
         for _, modality in ipairs(custom['Modalities']) do
            settings.modalities[modality] = true
         end
      end
   end
   return settings
end

local function AlreadyForwarded(instanceId)
   local answer = RestApiGet('/instances/' .. instanceId .. '/metadata')
   if answer == nil then
      return false
   end
   for _, name in ipairs(ParseJson(answer)) do
      if name == MARKER then
         return true
      end
   end
   return false
end

local function PendingChestInstances(studyId, modalities)
   local pending = {}
   local answer = RestApiGet('/studies/' .. studyId .. '/series')
   if answer == nil then
      return pending
   end
   for _, series in ipairs(ParseJson(answer)) do
      local modality = series['MainDicomTags']['Modality']
      if modality ~= nil and modalities[modality] then
         for _, instanceId in ipairs(series['Instances']) do
            if not AlreadyForwarded(instanceId) then
               table.insert(pending, instanceId)
            end
         end
      end
   end
   return pending
end

function OnStableStudy(studyId, tags, metadata)
   local settings = Settings()
   local pending = PendingChestInstances(studyId, settings.modalities)
   if #pending == 0 then
      return
   end

   -- (no "Timeout" here: Lua numbers are doubles, and Orthanc wants a JSON integer)
   local request = DumpJson({ Resources = pending, Synchronous = true }, true)
   local answer = RestApiPost('/modalities/' .. settings.target .. '/store', request)
   if answer == nil then
      print('forward-chest: sending ' .. #pending .. ' instance(s) of study ' .. studyId ..
            ' to ' .. settings.target .. ' failed; they will be sent when the study is stable again')
      return
   end

   local now = os.date('!%Y%m%dT%H%M%SZ')
   for _, instanceId in ipairs(pending) do
      RestApiPut('/instances/' .. instanceId .. '/metadata/' .. MARKER, now)
   end
   print('forward-chest: sent ' .. #pending .. ' instance(s) of study ' .. studyId ..
         ' to ' .. settings.target)
end
