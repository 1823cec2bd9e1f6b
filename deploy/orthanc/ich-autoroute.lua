-- Orthanc: send the CT series of every stable study to the ICH expansion service (DicomModalities entry "ich").
-- Studies that already hold the service's results (its SEG series) are not sent again; the service would
-- recognise the re-sent instances anyway and not analyse them twice.
function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local ct = {}
  for _, s in pairs(series) do
    local main = s['MainDicomTags']
    if main['SeriesDescription'] == 'ICH haematoma segmentation (research use)' then
      return
    end
    if main['Modality'] == 'CT' then
      table.insert(ct, s['ID'])
    end
  end
  if #ct > 0 then
    RestApiPost('/modalities/ich/store', DumpJson({Resources = ct, Synchronous = false}, true))
  end
end
