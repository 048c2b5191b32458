// RtsmlmLaser: a simulated activation laser (e.g. 405 nm) with a Power property in mW.
//
// The power is kept in an atomic so the camera's acquisition thread can read it for every frame
// without taking the device lock: a Power change takes effect on the next frame the camera starts.

#pragma once

#include "DeviceBase.h"

#include <atomic>

namespace rtsmlm {

extern const char* const kLaserDeviceName;

class RtsmlmLaser : public CGenericBase<RtsmlmLaser> {
public:
   RtsmlmLaser();

   int Initialize() override;
   int Shutdown() override;
   void GetName(char* name) const override;
   bool Busy() override { return false; }

   // Current power in mW; safe to call from any thread.
   double PowerMilliwatts() const { return power_mW_.load(std::memory_order_relaxed); }

private:
   int OnPower(MM::PropertyBase* prop, MM::ActionType act);

   std::atomic<double> power_mW_{0.0};
   double maxPower_mW_ = 100.0;
   bool initialized_ = false;
};

} // namespace rtsmlm
