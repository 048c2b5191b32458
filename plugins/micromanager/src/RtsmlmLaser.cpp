#include "RtsmlmLaser.h"

namespace rtsmlm {

const char* const kLaserDeviceName = "RtsmlmLaser";

RtsmlmLaser::RtsmlmLaser()
{
   InitializeDefaultErrorMessages();
   // Pre-init so a configuration can size the laser before it is initialized.
   CreateFloatProperty("MaxPower_mW", maxPower_mW_, false, nullptr, true);
   SetPropertyLimits("MaxPower_mW", 0.001, 100000.0);
}

void RtsmlmLaser::GetName(char* name) const
{
   CDeviceUtils::CopyLimitedString(name, kLaserDeviceName);
}

int RtsmlmLaser::Initialize()
{
   if (initialized_) return DEVICE_OK;
   char buf[MM::MaxStrLength];
   if (GetProperty("MaxPower_mW", buf) == DEVICE_OK)
      maxPower_mW_ = std::atof(buf);
   CreateStringProperty(MM::g_Keyword_Description, "rtsmlm simulated activation laser", true);
   CreateFloatProperty("Wavelength_nm", 405.0, true);
   int ret = CreateFloatProperty("Power", 0.0, false,
      new CPropertyAction(this, &RtsmlmLaser::OnPower));
   if (ret != DEVICE_OK) return ret;
   SetPropertyLimits("Power", 0.0, maxPower_mW_);
   initialized_ = true;
   return DEVICE_OK;
}

int RtsmlmLaser::Shutdown()
{
   initialized_ = false;
   return DEVICE_OK;
}

int RtsmlmLaser::OnPower(MM::PropertyBase* prop, MM::ActionType act)
{
   if (act == MM::BeforeGet)
      prop->Set(power_mW_.load());
   else if (act == MM::AfterSet)
   {
      double v = 0.0;
      prop->Get(v);
      power_mW_.store(v);
   }
   return DEVICE_OK;
}

} // namespace rtsmlm
