// Module entry points: the devices this adapter library (libmmgr_dal_Rtsmlm) offers.

#include "RtsmlmCamera.h"
#include "RtsmlmLaser.h"

#include "ModuleInterface.h"

#include <cstring>

MODULE_API void InitializeModuleData()
{
   RegisterDevice(rtsmlm::kCameraDeviceName, MM::CameraDevice,
      "rtsmlm camera: raw uint16 movie playback or live blinking simulation");
   RegisterDevice(rtsmlm::kLaserDeviceName, MM::GenericDevice,
      "rtsmlm simulated activation laser (Power in mW, read by RtsmlmCamera)");
}

MODULE_API MM::Device* CreateDevice(const char* deviceName)
{
   if (deviceName == nullptr) return nullptr;
   if (std::strcmp(deviceName, rtsmlm::kCameraDeviceName) == 0) return new rtsmlm::RtsmlmCamera();
   if (std::strcmp(deviceName, rtsmlm::kLaserDeviceName) == 0) return new rtsmlm::RtsmlmLaser();
   return nullptr;
}

MODULE_API void DeleteDevice(MM::Device* device)
{
   delete device;
}
